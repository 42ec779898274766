"""Tasks beyond image classification: what data, head, loss and metrics a trainer needs for each."""

"""Tools that read runs rather than train them: communication per round (``resist comm``), link
projections (``resist project``) and plots (``resist plot``)."""

"""Object detection on Pascal VOC with a YOLOv2-style ResNet (paper §5, Table 6); see README.md here."""

from .boxes import batched_nms, box_iou, nms
from .evaluate import DetectionEvaluator, DetectionScores, evaluate, postprocess, voc_ap_per_class
from .loss import YOLOv2Loss, decode_boxes
from ...models.yolo import (DETECTION_MODELS, VOC_ANCHORS, YOLOHead, attach_yolo_head, create_detection_model, yolo,
                    yolo_resnet, yolo_resnet101, yolo_resnet152, yolo_resnet200)
from ...data.voc import (IMAGENET_MEAN, IMAGENET_STD, TEST_SPLITS, TRAIN_SPLITS, VOC_CLASSES, DetectionBatchStream, Targets,
                  VOCDataset, VOCDetection, batch_keys, collate, eval_batches, load_index, parse_splits,
                  shard_indices, splits_text)

__all__ = [
    "DETECTION_MODELS", "IMAGENET_MEAN", "IMAGENET_STD", "TEST_SPLITS", "TRAIN_SPLITS", "VOC_ANCHORS", "VOC_CLASSES",
    "DetectionBatchStream", "DetectionEvaluator", "DetectionScores", "Targets", "VOCDataset", "VOCDetection",
    "YOLOHead", "YOLOv2Loss",
    "attach_yolo_head", "batch_keys", "batched_nms", "box_iou", "collate", "create_detection_model", "decode_boxes",
    "eval_batches", "evaluate", "load_index", "nms", "parse_splits", "postprocess", "shard_indices", "splits_text",
    "voc_ap_per_class", "yolo", "yolo_resnet", "yolo_resnet101", "yolo_resnet152", "yolo_resnet200",
]

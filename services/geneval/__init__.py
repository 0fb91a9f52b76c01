"""GenEval reward service: GenEval's rules over detections from a pluggable detector backend (shapes or mmdet)."""

"""``--strategy frozen``: a new head trained end to end on augmented images, the pretrained backbone frozen."""

from transferkit.training.strategies.base import END_TO_END_OPTIONS, Strategy, augment_check

STRATEGY = Strategy("frozen", "end-to-end", "a new head trained end to end on a frozen backbone", END_TO_END_OPTIONS, {"dropout": 0.2}, augment_check)

"""Learning-rate schedules stepped once per iteration."""
from __future__ import annotations

from torch.optim.lr_scheduler import LRScheduler


class PolyLR(LRScheduler):
    """Poly decay with linear warm-up (DeepLab; HRNet-OCR uses power 0.9):

        warm-up (t < W):  lr_t = base * (r + (1 - r) * t / W)
        after:            lr_t = (base - min_lr) * (1 - (t - W) / (T - W)) ** power + min_lr
    """

    def __init__(self, optimizer, total_iters: int, power: float = 0.9, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, min_lr: float = 0.0, last_epoch: int = -1):
        self.total_iters = max(1, total_iters)
        self.power = power
        self.warmup_iters = max(0, min(warmup_iters, self.total_iters - 1))
        self.warmup_ratio = warmup_ratio
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    def factor_lr(self, base: float, t: int) -> float:
        w = self.warmup_iters
        if t < w:
            return base * (self.warmup_ratio + (1 - self.warmup_ratio) * t / w)
        progress = min(1.0, (t - w) / max(1, self.total_iters - w))
        return (base - self.min_lr) * (1 - progress) ** self.power + self.min_lr

    def get_lr(self):
        return [self.factor_lr(base, self.last_epoch) for base in self.base_lrs]

"""The one place where a data-parallel run must combine what each process saw.

Single-process training uses `LocalSync` (every method is the identity). A distributed trainer
subclasses it with torch.distributed all-reduces; the trainer calls nothing else across processes.
"""

from __future__ import annotations

from torch import Tensor, nn


class LocalSync:
    """Reductions across data-parallel processes; identity for one process."""

    world_size: int = 1
    rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and shows progress."""
        return self.rank == 0

    def gradients(self, module: nn.Module) -> None:
        """Average parameter gradients over processes (after backward, before clipping)."""

    def fired(self, fired_N: Tensor) -> Tensor:
        """Latents that fired on any process this step (logical or)."""
        return fired_N

    def extras(self, extras: dict[str, Tensor]) -> dict[str, Tensor]:
        """Step extras the SAE's after_step reads: BatchTopK's `min_active` is a min over processes."""
        return extras

    def mean(self, value: Tensor) -> Tensor:
        """Average a logged scalar over processes."""
        return value

    def tokens(self, batch_tokens: int) -> int:
        """Tokens consumed by all processes in one step."""
        return batch_tokens * self.world_size

    def barrier(self) -> None:
        """Wait for every process (around checkpoint writes)."""

    def any(self, flag: bool) -> bool:
        """Whether any process raised `flag` (Ctrl-C, a bad batch, a non-finite loss), so all act alike."""
        return flag

    def broadcast_module(self, module: nn.Module) -> None:
        """Give every process rank 0's parameters and buffers (after initialisation)."""


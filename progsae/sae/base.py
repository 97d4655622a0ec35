"""The SAE contract every architecture shares: encode, decode, save/load, permute, select.

Tensor names carry their shapes: B batch, D d_in, N n_latents, K active latents per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

from progsae.sae.config import SAEConfig


@dataclass
class TrainContext:
    """What the trainer hands an SAE each step; the SAE owns its loss terms."""

    dead_mask_N: Tensor | None = None  # latents that have not fired within the dead window
    aux_coef: float = 1 / 32
    k_aux: int = 256
    l1_coef: float = 0.0
    generator: torch.Generator | None = None  # random Matryoshka prefixes
    # averages a batch statistic over data-parallel processes (progsae/train/distributed.py); None: one process
    global_mean: Callable[[Tensor], Tensor] | None = None


@dataclass
class StepOutput:
    """One training step's result: the loss to backpropagate and its named parts."""

    loss: Tensor
    losses: dict[str, Tensor]
    x_hat_BD: Tensor
    fired_N: Tensor  # bool, latents active for at least one row of the batch
    l0: Tensor  # mean number of active latents per row
    extras: dict[str, Tensor] = field(default_factory=dict)


class SAE(nn.Module):
    """Base class: x_hat = decode(encode(x)); subclasses define the activation rule."""

    architecture: ClassVar[str] = ""
    extra_tensors: ClassVar[tuple[str, ...]] = ()  # saved beside W_enc/W_dec/b_enc/b_dec

    def __init__(self, cfg: SAEConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        dtype = dtype or getattr(torch, cfg.dtype)
        d, n = cfg.d_in, cfg.n_latents
        # contiguous [D, N], so state_dict() saves as is and W_enc.view(-1) works (SAELens' layout)
        self.W_enc = nn.Parameter(torch.zeros(d, n, device=device, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(n, d, device=device, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(n, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d, device=device, dtype=dtype))

    # ---- inference -------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    @property
    def device(self) -> torch.device:
        """Where the weights live (SAELens' `sae.device`)."""
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (SAELens' `sae.dtype`)."""
        return self.W_dec.dtype

    def pre_acts(self, x_BD: Tensor) -> Tensor:
        """Encoder pre-activations W_enc^T (x - b_dec) + b_enc."""
        if self.cfg.subtract_b_dec:
            x_BD = x_BD - self.b_dec
        if x_BD.dim() == 2:
            return torch.addmm(self.b_enc, x_BD, self.W_enc)  # bias in the matmul: no second [B, N] pass
        return x_BD @ self.W_enc + self.b_enc

    def activation(self, pre_BN: Tensor) -> Tensor:
        """The inference activation rule applied to pre-activations."""
        raise NotImplementedError

    def encode(self, x_BD: Tensor) -> Tensor:
        """Dense latent codes z [B, N]; a mask-mode SAE zeros latents >= mask_size."""
        z_BN = self.activation(self.pre_acts(x_BD))
        if self.cfg.mask_size is not None:
            if z_BN.requires_grad:
                z_BN = z_BN.clone()
            z_BN[..., self.cfg.mask_size :] = 0
        return z_BN

    def decode(self, z_BN: Tensor) -> Tensor:
        """x_hat = z W_dec + b_dec. Without autograd, sparse codes (< 1/32 nonzero) are decoded by gathering
        only their decoder rows: the same sums, ~4x faster than the dense matmul at n 16384, k 32."""
        if z_BN.dim() == 2 and not torch.is_grad_enabled() and int(torch.count_nonzero(z_BN)) * 32 <= z_BN.numel():
            from progsae.kernels.sparse_topk import sparse_decode_bags

            rows, cols = z_BN.nonzero(as_tuple=True)  # row-major: entries come grouped by row
            return sparse_decode_bags(z_BN[rows, cols], cols, rows, self.W_dec, z_BN.shape[0]) + self.b_dec
        return z_BN @ self.W_dec + self.b_dec

    def forward(self, x_BD: Tensor) -> Tensor:
        return self.decode(self.encode(x_BD))

    # ---- training --------------------------------------------------------------------------
    def train_activation(self, pre_BN: Tensor) -> Tensor:
        """The activation rule used in training (BatchTopK differs from its inference rule)."""
        return self.activation(pre_BN)

    def training_step(self, x_BD: Tensor, ctx: TrainContext) -> StepOutput:
        """Dense reference training step; fast architectures override it."""
        from progsae.sae.losses import dense_step

        return dense_step(self, x_BD, ctx)

    def after_step(self, out: StepOutput) -> None:
        """Update state that is not learned by gradient (e.g. BatchTopK's threshold)."""

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component parallel to each (unit) decoder row."""
        if self.W_dec.grad is None:
            return
        g = self.W_dec.grad
        dots_N = torch.einsum("nd,nd->n", g, self.W_dec)  # no [N, D] temporary (~4x faster than (g * W).sum(1) here)
        g.addcmul_(dots_N[:, None], self.W_dec, value=-1)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on scale*x act on raw x with the same decoder: codes shrink by scale."""
        self.b_enc.div_(scale)
        self.b_dec.div_(scale)
        for name in self.extra_tensors:
            if name == "threshold":
                getattr(self, name).div_(scale)
        self.cfg.normalization = {"kind": "scalar", "scale": float(scale), "folded": True}

    # ---- latent reordering -----------------------------------------------------------------
    def latent_tensors(self) -> dict[str, int]:
        """Tensors indexed by latent, with the dimension that holds the latent index."""
        out = {"W_enc": 1, "W_dec": 0, "b_enc": 0}
        for name in self.extra_tensors:
            t = getattr(self, name)
            if t.ndim > 0 and t.shape[0] == self.n_latents:
                out[name] = 0
        return out

    @torch.no_grad()
    def select(self, idx_G: Tensor, into: type["SAE"] | None = None, **cfg_changes) -> "SAE":
        """A new SAE holding only the latents idx (in that order); cfg fields may be overridden.

        `into` builds another SAE class (with cfg_changes naming its architecture), keeping only the tensors
        it holds: e.g. a BatchTopK SAE selected into TopKSAE drops its global threshold."""
        idx_G = torch.as_tensor(idx_G, dtype=torch.long, device=self.W_enc.device)
        changes = {"prefixes": None, "mask_size": None, **cfg_changes}
        cfg = replace(self.cfg, n_latents=int(idx_G.numel()), **changes)
        cfg.provenance = dict(cfg.provenance)
        cls = into or type(self)
        new = cls(cfg, device=self.W_enc.device, dtype=self.W_enc.dtype)
        wanted = new.state_dict().keys()
        dims = self.latent_tensors()
        state = {}
        for name, t in self.state_dict().items():
            if name not in wanted:
                continue
            dim = dims.get(name)
            state[name] = t.index_select(dim, idx_G).clone() if dim is not None else t.clone()
        new.load_state_dict(state)
        return new

    @torch.no_grad()
    def permute(self, perm_N: Tensor) -> "SAE":
        """The same SAE with latents reordered so new latent j is old latent perm[j]; outputs unchanged."""
        perm_N = torch.as_tensor(perm_N, dtype=torch.long)
        if perm_N.numel() != self.n_latents or not torch.equal(perm_N.sort().values, torch.arange(self.n_latents)):
            from progsae.errors import ProgsaeError

            raise ProgsaeError(f"ordering is not a permutation of the {self.n_latents} latents")
        return self.select(perm_N)

    def at_size(self, size: int, mode: str = "mask") -> "SAE":
        """The first `size` latents of this Matryoshka or importance-sorted SAE ("mask" or "retopk"; see progsae.progressive.prune)."""
        from progsae.progressive.prune import at_size

        return at_size(self, size, mode=mode)

    def at_k(self, k: int, acts=None, split: str | None = None) -> "SAE":
        """This SAE keeping only the k largest activations per row (BatchTopK: the threshold giving mean L0 k on
        held-out `acts`); composes with at_size (see progsae.progressive.sparsity)."""
        from progsae.progressive.sparsity import at_k

        return at_k(self, k, acts, split=split)

    # ---- files -----------------------------------------------------------------------------
    def save(self, path) -> None:
        from progsae.sae.io import save_sae

        save_sae(self, path)

    @classmethod
    def load_from_disk(cls, path, device: torch.device | str = "cpu") -> "SAE":
        """The SAE in a local folder of any format progsae reads (SAELens' name for `progsae.load_sae`)."""
        from pathlib import Path

        from progsae.errors import ProgsaeError
        from progsae.sae.io import load_sae

        if not Path(path).exists():
            raise ProgsaeError(f"{path}: no such SAE folder")
        return load_sae(path, device=device)

    @classmethod
    def from_pretrained(cls, spec: str, device: torch.device | str = "cpu", revision: str | None = None) -> "SAE":
        """The SAE in the Hugging Face Hub folder 'OWNER/REPO/PATH', downloaded as `progsae import --from-hub` does."""
        from progsae.interop.hub import load_from_hub

        return load_from_hub(spec, device=str(device), revision=revision)

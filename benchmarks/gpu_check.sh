#!/usr/bin/env bash
# The GPU check: one script for a CUDA machine with torch and transformers, no network, no model hub.
#
#   bash benchmarks/gpu_check.sh [OUT]          (default OUT: gpu_check_out; budget: under 8 minutes on one H100/H200)
#
# 1. the CUDA tests (pytest -m cuda);
# 2. TopK and Matryoshka training throughput at d 2304, n 65536, k 64, batch 4096: progsae's own step against
#    sparsify's step (with Triton when importable; skipped when sparsify is not installed) and against the matmul
#    bound (the 3 dense B x d x n products of a step at the measured bf16 and tf32 matmul rates);
# 3. a streamed study (data.stream: true) on a randomly initialised model built from a Gemma-2-2b-shaped config
#    (26 layers, d 2304), a local tokenizer and the Python standard library as corpus: nothing is downloaded.
# Everything goes to OUT/summary.md (one file); the logs of each part stay beside it.
# GPU_CHECK_SMALL=1 GPU_CHECK_DEVICE=cpu runs part 3 at toy sizes (a dry run of the script's plumbing without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.md"
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PROGSAE_CACHE="$OUT/cache"
export GPU_CHECK_DEVICE=${GPU_CHECK_DEVICE:-cuda} GPU_CHECK_SMALL=${GPU_CHECK_SMALL:-0}
START=$(date +%s)

{
  echo "# progsae GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo 'nvidia-smi not found')"
  $PY - <<'EOF'
import importlib, torch
print(f"- torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
for name in ("transformers", "safetensors", "numpy", "tqdm", "pydantic", "matplotlib", "sparsify", "triton", "pytest"):
    try:
        mod = importlib.import_module(name)
        print(f"- {name} {getattr(mod, '__version__', '?')}")
    except Exception as e:  # a missing optional package is reported, not fatal
        print(f"- {name}: not importable ({type(e).__name__})")
EOF
  echo
} > "$SUMMARY" 2>&1

section() { echo -e "\n## $1\n" >> "$SUMMARY"; }

# ---- 1. CUDA tests ----------------------------------------------------------------------------------
section "1. CUDA tests (pytest -m cuda)"
timeout 100 $PY -m pytest -q -p no:cacheprovider -m cuda tests > "$OUT/cuda_tests.log" 2>&1
echo "exit $? ; last lines:" >> "$SUMMARY"
echo '```' >> "$SUMMARY"; tail -n 8 "$OUT/cuda_tests.log" >> "$SUMMARY"; echo '```' >> "$SUMMARY"

# ---- 2. training throughput -------------------------------------------------------------------------
section "2. Training throughput, d 2304, n 65536, k 64, batch 4096 (rows/s, medians of timed steps)"
timeout 90 $PY - > "$OUT/throughput.log" 2>&1 <<'EOF'
import os, statistics, time, torch
from progsae.sae import SAEConfig, TopKSAE, TrainContext
from progsae.train.optimizer import LayoutAdam

d, n, k, B, steps = 2304, 65536, 64, 4096, 10
dev = torch.device(os.environ["GPU_CHECK_DEVICE"])
if os.environ["GPU_CHECK_SMALL"] == "1":  # the dry run: toy sizes
    d, n, k, B, steps = 64, 1024, 8, 256, 3
elif not torch.cuda.is_available():
    raise SystemExit("no CUDA device: throughput not measured")
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
torch.manual_seed(0)
x = torch.randn(B, d, device=dev)

def timed(step, warm=3):
    for _ in range(warm):
        step()
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter(); step(); sync(); times.append(time.perf_counter() - t)
    return B / statistics.median(times)

def progsae_step(prefixes):
    sae = TopKSAE(SAEConfig(architecture="topk", d_in=d, n_latents=n, k=k, prefixes=prefixes), device=dev)
    with torch.no_grad():
        sae.W_dec.normal_().div_(sae.W_dec.norm(dim=1, keepdim=True)); sae.W_enc.copy_(sae.W_dec.T)
    opt = LayoutAdam(sae.parameters(), lr=1e-4)
    ctx = TrainContext(aux_coef=1 / 32, k_aux=d // 2, generator=torch.Generator().manual_seed(0))
    ctx.dead_mask_N = torch.zeros(n, dtype=torch.bool, device=dev); ctx.l1_coef = 0.0
    def step():
        out = sae.training_step(x, ctx); out.loss.backward(); sae.remove_parallel_decoder_grad()
        opt.step(); opt.zero_grad(); sae.normalize_decoder()
    return step

rates = {"progsae topk": timed(progsae_step(None)), "progsae matryoshka (3 prefixes)": timed(progsae_step([n // 4, n // 2, n]))}
try:
    import sparsify
    from sparsify import SparseCoder
    try:
        from sparsify import SparseCoderConfig
    except ImportError:  # older sparsify
        from sparsify import SaeConfig as SparseCoderConfig
    try:
        import triton  # noqa: F401  sparsify's fused kernels use it when present
        tri = "with Triton"
    except ImportError:
        tri = "without Triton"
    sc = SparseCoder(d, SparseCoderConfig(num_latents=n, k=k), device=dev, dtype=torch.float32)
    sopt = torch.optim.Adam(sc.parameters(), lr=1e-4)
    dead = torch.zeros(n, dtype=torch.bool, device=dev)
    def sstep():  # the body of sparsify.Trainer.fit for one step (as benchmarks/peers.py runs it)
        sc.set_decoder_norm_to_unit_norm()
        out = sc(x=x, y=x, dead_mask=dead)
        (out.fvu + out.auxk_loss / 32 + out.multi_topk_fvu / 8).backward()
        sc.remove_gradient_parallel_to_decoder_directions(); sopt.step(); sopt.zero_grad()
    rates[f"sparsify {getattr(sparsify, '__version__', '?')} ({tri})"] = timed(sstep)
except Exception as e:
    print(f"sparsify: skipped ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")

def matmul_rate(dtype, tf32):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    if dev.type != "cuda" and dtype == torch.bfloat16:
        dtype = torch.float32  # the dry run: bf16 matmuls are very slow on CPU
    a, b = torch.randn(B, d, device=dev, dtype=dtype), torch.randn(d, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(); t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 10 * 2 * B * d * n / (time.perf_counter() - t)

flops_per_row = 3 * 2 * d * n  # encoder forward, encoder weight gradient, input gradient (the decode is sparse: O(k d))
for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True)):
    f = matmul_rate(dtype, tf32)
    rates[f"matmul bound {name} ({f / 1e12:.1f} TFLOP/s measured)"] = f / flops_per_row
for name, r in rates.items():
    print(f"| {name} | {r:,.0f} rows/s |")
EOF
echo "exit $?" >> "$SUMMARY"
echo "| step | throughput |" >> "$SUMMARY"; echo "|---|---|" >> "$SUMMARY"
grep '^|' "$OUT/throughput.log" >> "$SUMMARY"; grep -v '^|' "$OUT/throughput.log" | tail -n 5 >> "$SUMMARY"

# ---- 3. streamed study on a random Gemma-2-2b-shaped model --------------------------------------------
section "3. Streamed study on a randomly initialised Gemma-2-2b-shaped model"
timeout 250 $PY - > "$OUT/study.log" 2>&1 <<EOF
import json, os, sys, sysconfig, time
from pathlib import Path
import torch
out = Path("$OUT")
device, small = os.environ["GPU_CHECK_DEVICE"], os.environ["GPU_CHECK_SMALL"] == "1"
# the Gemma-2-2b shape (26 layers, d 2304, 8 heads of 256, 4 KV heads, MLP 9216, vocab 256000); toy sizes for a dry run
shape = dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
             num_key_value_heads=4, head_dim=256) if not small else dict(vocab_size=8192, hidden_size=64, intermediate_size=128,
             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
model_dir = out / "gemma2-2b-shaped-random"
if not (model_dir / "config.json").exists():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, Gemma2Config, PreTrainedTokenizerFast
    texts = [p.read_text(errors="replace") for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]]
    tok = Tokenizer(models.BPE()); tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tok.decoder = decoders.ByteLevel()
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(vocab_size=8192, special_tokens=list(special.values()),
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    cfg = Gemma2Config(**shape, max_position_embeddings=8192, sliding_window=4096, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: 2.6 B parameters initialise in seconds on a GPU
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(model_dir); tokenizer.save_pretrained(model_dir)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
corpus = out / "corpus.jsonl"
with open(corpus, "w") as f:
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        f.write(json.dumps({"text": p.read_text(errors="replace")}) + "\n")
big = not small
study = {"name": "gpu-check", "device": device, "outlier_factor": 5.0,
         "data": {"model": str(model_dir), "hook": "resid_post.12" if big else "resid_post.2", "corpus": str(corpus),
                  "context_length": 1024 if big else 128, "tokens": 400000 if big else 20000, "test_tokens": 20000 if big else 2000,
                  "validation_tokens": 20000 if big else 2000, "storage_dtype": "float16", "batch_size": 16, "stream": True},
         "train": {"arch": "topk", "k": 64 if big else 16, "granularities": [16384, 32768, 65536] if big else [256, 512, 1024],
                   "batch_size": 4096 if big else 512, "epochs": 1.0, "seed": 0, "seeds": [0], "lr": 1e-4 if big else 2e-3,
                   "shuffle_buffer_gb": 2.0},
         "eval": {"metrics": ["recon", "ce", "rsa"], "modes": ["mask", "retopk"], "ce_contexts": 8, "ce_batch_size": 4,
                  "rsa_tokens": 2000, "seed": 0, "bootstrap_replicates": 200, "ce_controls": False}}
(out / "study.json").write_text(json.dumps(study, indent=1))
from progsae.cli import main
t = time.perf_counter()
rc = main(["reproduce", "--config", str(out / "study.json"), "--out", str(out / "study"), "--no-progress"])
peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device == "cuda" else "n/a"
print(f"STUDY rc={rc} seconds={time.perf_counter() - t:.1f} peak_gpu_gib={peak}")
sys.exit(rc)
EOF
echo "exit $? ; $(grep '^STUDY' "$OUT/study.log" | tail -1)" >> "$SUMMARY"
$PY - >> "$SUMMARY" 2>&1 <<EOF
import json
from pathlib import Path
run = Path("$OUT") / "study"
if (run / "stages" / "train.json").exists():
    t = json.loads((run / "stages" / "train.json").read_text())
    print(f"- train stage {t['seconds']} s (every SAE from one stream: {t.get('streamed')})")
    print(f"- train rows on disk: {sorted(p.name for p in (run / 'acts').glob('train-*'))} (expected none)")
if (run / "results.json").exists():
    rows = [r for r in json.loads((run / "results.json").read_text()) if r["mode"] == "full" and not r.get("full_size_copy")]
    for r in rows:
        print(f"- {r['folder']}: FVU {r['fvu']}, L0 {r['l0']}, recaptured CE (zero) {r.get('ce_recaptured_zero')}")
print("- precision: activations collected under bf16 autocast (float16 storage); the recaptured-CE evaluation runs the model "
      "in its fp32 weights without autocast (docs/scaling.md), not at the collection precision.")
EOF
echo '```' >> "$SUMMARY"; tail -n 15 "$OUT/study.log" >> "$SUMMARY"; echo '```' >> "$SUMMARY"

echo -e "\nTotal: $(( $(date +%s) - START )) s" >> "$SUMMARY"
echo "wrote $SUMMARY"

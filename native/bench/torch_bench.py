#!/usr/bin/env python3
"""The PyTorch side of `clo bench --compare-torch PYTHON`: the same work in PyTorch eager.

`clo bench` writes a JSON spec (the model's config.json or its directory, the exact token ids,
the method and its settings) and runs `PYTHON torch_bench.py SPEC OUT`. This script builds the
model with transformers (random weights of the same shape, or the same checkpoint), does the same
work and writes what it measured to OUT:

- train: one optimizer step per repetition, as `clo train` does it: the frozen reference's
  summed response log-probs computed once beforehand (precomputed reference), then forward,
  loss (CLO, DPO or SFT exactly as method.md and clo's loss.rs), backward, global-norm clipping
  and torch.optim.AdamW over the trainable parameters (attention projections, LoRA on them
  through peft, or everything);
- generate: greedy decoding with the KV cache (`model.generate(do_sample=False)`), every row
  producing exactly `new_tokens` tokens.

Needs torch and transformers (and peft for `--trainable lora`).
"""

import json
import math
import resource
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def load_model(spec, device):
    torch.manual_seed(spec["seed"])
    if spec.get("model_dir"):
        path = spec["model_dir"]
        kwargs = {"dtype": torch.float32}
        if path.endswith(".gguf"):
            import os

            kwargs["gguf_file"] = os.path.basename(path)
            path = os.path.dirname(path) or "."
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        cfg = dict(spec["config"])
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.to(device)


def collate(rows, device):
    """Right-padded inputs, next-token labels and the response mask, as clo's `collate`."""
    width = max(max(len(p) + len(r) - 1 for p, r in rows), 1)
    inputs = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width)
    for b, (p, r) in enumerate(rows):
        ids = p + r
        for t in range(len(ids) - 1):
            inputs[b, t] = ids[t]
            labels[b, t] = ids[t + 1]
            mask[b, t] = 1.0 if t + 1 >= len(p) else 0.0
    counts = torch.tensor([float(len(r)) for _, r in rows])
    return inputs.to(device), labels.to(device), mask.to(device), counts.to(device)


def logps(model, inputs, labels, mask):
    logits = model(input_ids=inputs).logits
    picked = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def nll(logp, counts, reduction):
    if reduction == "token_mean":
        return -logp.sum() / counts.sum()
    return -logp.mean()


def dpo(pc, pr, rc, rr, beta):
    z = beta * (pc - rc) - beta * (pr - rr)
    return -F.logsigmoid(z).mean()


def objective_loss(obj, policy, reference, counts, english):
    kind = obj["kind"]
    if kind == "clo":
        n = policy.shape[0] // 4
        blk = lambda t, k: t[k * n : (k + 1) * n]
        beta, lam = obj["beta"], obj["lambda"]
        cl = dpo(blk(policy, 0), blk(policy, 1), blk(reference, 0), blk(reference, 1), beta)
        cl = cl + dpo(blk(policy, 2), blk(policy, 3), blk(reference, 2), blk(reference, 3), beta)
        sft = nll(blk(policy, 2), blk(counts, 2), obj["reduction"])
        return lam * sft + (1 - lam) * cl
    if kind == "dpo":
        n = policy.shape[0] // 2
        return dpo(policy[:n], policy[n:], reference[:n], reference[n:], obj["beta"])
    return nll(policy, counts, obj["reduction"])


def set_trainable(model, spec):
    kind = spec["trainable"]
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=spec["lora_rank"],
            lora_alpha=spec["lora_alpha"],
            target_modules=spec["lora_targets"],
            lora_dropout=0.0,
            bias="none",
        )
        return get_peft_model(model, config)
    for name, p in model.named_parameters():
        p.requires_grad_(
            kind == "full"
            or any(f"self_attn.{m}." in name for m in ("q_proj", "k_proj", "v_proj", "o_proj"))
        )
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_train(spec, model, device):
    model = set_trainable(model, spec)
    model.train()
    inputs, labels, mask, counts = collate(spec["rows"], device)
    obj = spec["objective"]
    reference = None
    if obj["kind"] != "sft":
        with torch.no_grad():
            reference = logps(model, inputs, labels, mask)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=spec["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=spec["weight_decay"]
    )
    times, losses = [], []
    for _ in range(spec["warmup"] + spec["steps"]):
        sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = objective_loss(obj, logps(model, inputs, labels, mask), reference, counts, None)
        loss.backward()
        if spec["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(params, spec["max_grad_norm"])
        value = loss.item()
        if math.isfinite(value):
            opt.step()
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(value)
    return {"step_seconds": times, "losses": losses}


def bench_generate(spec, model, device):
    model.eval()
    prompts = torch.tensor(spec["prompts"], dtype=torch.long, device=device)
    n = spec["new_tokens"]
    times, out = [], None
    with torch.no_grad():
        for _ in range(spec["warmup"] + spec["steps"]):
            sync(device)
            t0 = time.perf_counter()
            out = model.generate(
                prompts,
                attention_mask=torch.ones_like(prompts),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
            sync(device)
            times.append(time.perf_counter() - t0)
    return {"step_seconds": times, "ids": out[:, prompts.shape[1] :].tolist()}


def peak_rss():
    """This process's peak RSS. Linux's VmHWM, not ru_maxrss: a process started by `clo bench`
    inherits clo's peak in ru_maxrss (the forked copy's high-water mark survives exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    spec_path, out_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    want = spec["device"]
    if want == "gpu" and torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model = load_model(spec, device)
    if spec["kind"] == "train":
        result = bench_train(spec, model, device)
    else:
        result = bench_generate(spec, model, device)
    if device.type == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_reserved()
        result["memory_kind"] = "cuda max_memory_reserved"
        result["device_name"] = torch.cuda.get_device_name()
    else:
        result["peak_memory_bytes"] = peak_rss()
        result["memory_kind"] = "peak RSS"
        result["device_name"] = "cpu"
    result["device"] = device.type
    result["threads"] = torch.get_num_threads()
    result["torch"] = torch.__version__
    result["transformers"] = transformers.__version__
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()

"""Training throughput: Lightning fit loop vs a bare PyTorch loop, and the RNN's share of matmul peak.

Same model (BiGRU 2 x 128 by default), same tensors (batches of 64 clips of 101 frames x 40
features), same optimiser (AdamW), measured side by side in one run. Prints samples per second of
both loops (medians over repeats) and their ratio, then the achieved GFLOP/s of the recurrent
layers (forward + backward) against the measured peak of a float32 matrix multiply.

    python benchmarks/train_throughput.py [--cell gru] [--steps 30] [--repeats 3] [--batch 64]
    python benchmarks/train_throughput.py --compile true     # also torch.compile (slow: minutes to compile)
    python benchmarks/train_throughput.py --device cuda --precision bf16-mixed --batch 256
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from typing import Literal

import pytorch_lightning as pl
import torch
from common import command_line, synchronize
from torch.utils.data import DataLoader, Dataset

from speechrnn.models import RNNClassifier, SequenceClassifierNet
from speechrnn.padding import lengths_mask

CPU = torch.device("cpu")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


class FixedBatches(Dataset):
    """Pre-built batches, so both loops see exactly the same tensors and no data-loading cost."""

    def __init__(self, batches: list[tuple[torch.Tensor, ...]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return self.batches[index]


def make_batches(
    count: int, batch: int, frames: int, features: int, classes: int, min_frames: int | None = None
) -> list[tuple[torch.Tensor, ...]]:
    """``count`` padded batches; lengths uniform in ``[min_frames, frames]`` (all ``frames`` when None)."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        x = torch.randn(batch, frames, features, generator=generator)
        if min_frames is None or min_frames >= frames:
            lengths = torch.full((batch,), frames, dtype=torch.int64)
        else:
            lengths = torch.randint(min_frames, frames + 1, (batch,), generator=generator)
            x = x * lengths_mask(lengths, frames)[..., None]
        batches.append((x, lengths, torch.randint(0, classes, (batch,), generator=generator)))
    return batches


def recurrent_flops_per_frame(cell: str, input_size: int, hidden: int, layers: int, directions: int) -> float:
    """Multiply-add FLOPs of the recurrent layers per frame, forward and backward (backward ~ 2x forward)."""
    forward = 0.0
    for layer in range(layers):
        inputs = input_size if layer == 0 else hidden * directions
        forward += directions * 2 * GATES[cell] * hidden * (inputs + hidden)
    return 3 * forward


AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass
class Settings:
    """The model, its batches, and how much is timed.

    Attributes:
        cell: Recurrent cell of both loops.
        hidden: Units per layer and direction.
        layers: Recurrent layers.
        features: Features per frame.
        frames: Frames per clip (the longest, with min_frames).
        batch: Clips per batch.
        classes: Classes of the head.
        steps: Optimizer steps timed per repeat.
        warmup: Steps run before the timed ones.
        repeats: Repeats of every measurement (medians reported).
        compile: Also time torch.compile of the bare loop (slow: minutes to compile).
        device: cpu (default) or cuda.
        precision: Precision of both loops.
        min_frames: Clip lengths uniform in [min_frames, frames] (default: all frames long).
        packed: Both loops use the packed path; the bare loop is also timed padded.
    """

    cell: Literal["gru", "lstm", "rnn"] = "gru"
    hidden: int = 128
    layers: int = 2
    features: int = 40
    frames: int = 101
    batch: int = 64
    classes: int = 12
    steps: int = 30
    warmup: int = 5
    repeats: int = 3
    compile: bool = False
    device: str = "cpu"
    precision: Literal["16-mixed", "32-true", "bf16-mixed"] = "32-true"
    min_frames: int | None = None
    packed: bool = False

    @property
    def torch_device(self) -> torch.device:
        """``device`` as a ``torch.device``."""
        return torch.device(self.device)

    def network(self) -> SequenceClassifierNet:
        """A new bidirectional network of these sizes (the bare loop's)."""
        return SequenceClassifierNet(self.features, self.classes, self.cell, self.hidden, self.layers, True)


def bare_loop(
    model: SequenceClassifierNet, batches: list, steps: int, device: torch.device = CPU, precision: str = "32-true"
) -> float:
    """What the Trainer does per step, by hand: features and labels to the device (lengths stay on
    the CPU), autocast, backward (scaled for float16), AdamW step."""
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    dtype = AUTOCAST[precision]
    model.train()
    synchronize(device)
    start = time.perf_counter()
    for step in range(steps):
        features, lengths, labels = batches[step % len(batches)]
        features, labels = features.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(features, lengths).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    synchronize(device)
    return steps * batches[0][0].shape[0] / (time.perf_counter() - start)


class StepTimer(pl.Callback):
    """Times ``steps`` optimizer steps after ``warmup``; synchronises the GPU only at both ends."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.target, self.start, self.end = warmup, steps, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup + self.target:
            synchronize(pl_module.device)
            self.end = time.perf_counter()


def lightning_loop(bench: Settings, batches: list, steps: int, warmup: int) -> float:
    model = RNNClassifier(bench.features, bench.classes, cell=bench.cell, hidden_size=bench.hidden,
                          num_layers=bench.layers, bidirectional=True, dropout=0.0, scheduler="none", lr=1e-3,
                          packed=bench.packed)  # fmt: skip
    timer = StepTimer(warmup, steps)
    trainer = pl.Trainer(
        max_steps=steps + warmup, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer], accelerator=bench.torch_device.type, devices=1,
        precision=bench.precision, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    loader = DataLoader(FixedBatches(batches), batch_size=None, shuffle=False)
    trainer.fit(model, train_dataloaders=loader)
    return steps * batches[0][0].shape[0] / (timer.end - timer.start)


def matmul_peak(size: int = 2048, repeats: int = 10, device: torch.device = CPU) -> float:
    """float32 matrix multiply (TF32 off on GPUs unless the user enabled it)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def step_matmul_peak(batch: int, hidden: int, gates: int, repeats: int = 200, device: torch.device = CPU) -> float:
    """GFLOP/s of the recurrence's own product, ``(batch x hidden) @ (hidden x gates*hidden)`` for two
    directions at once: what one time step's matmul can reach, as opposed to a large matmul's peak."""
    h = torch.randn(2, batch, hidden, device=device)
    w = torch.randn(2, hidden, gates * hidden, device=device)
    out = torch.bmm(h, w)
    for _ in range(20):
        torch.bmm(h, w, out=out)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.bmm(h, w, out=out)
    synchronize(device)
    return 2 * 2 * batch * hidden * gates * hidden * repeats / (time.perf_counter() - start) / 1e9


def recurrent_gflops(bench: Settings, batches: list, steps: int, fused: bool = True) -> float:
    """Achieved GFLOP/s of the encoder alone, forward and backward (``fused``: speechrnn's fused CPU
    recurrence for RNNs and GRUs on a CPU, the whole-stack kernel for full-length batches on a GPU;
    else one PyTorch module per layer and direction)."""
    net = bench.network()
    encoder = net.encoder.to(bench.torch_device).train()
    encoder.fused = "auto" if fused else "off"
    features, lengths, _ = batches[0]
    features = features.to(bench.torch_device)
    for _ in range(3):
        encoder(features, lengths)[0].sum().backward()
    synchronize(bench.torch_device)
    start = time.perf_counter()
    for _ in range(steps):
        encoder(features, lengths)[0].sum().backward()
    synchronize(bench.torch_device)
    elapsed = time.perf_counter() - start
    frames = steps * features.shape[0] * features.shape[1]
    return recurrent_flops_per_frame(bench.cell, bench.features, bench.hidden, bench.layers, 2) * frames / elapsed / 1e9


def compiled_loop(bench: Settings, batches: list, steps: int) -> tuple[float, float, float]:
    """``torch.compile`` of the bare loop's network: (seconds to the end of the first step, which
    is mostly compilation, eager samples/s, compiled samples/s), measured side by side."""
    import torch._dynamo

    torch._dynamo.config.allow_rnn = True  # off by default: dynamo would otherwise skip the RNNs
    net = bench.network()
    compiled = torch.compile(net)
    tick = time.perf_counter()
    bare_loop(compiled, batches, 1, bench.torch_device, bench.precision)
    compile_s = time.perf_counter() - tick
    bare_loop(compiled, batches, bench.warmup, bench.torch_device, bench.precision)
    eager = bench.network()
    bare_loop(eager, batches, bench.warmup, bench.torch_device, bench.precision)
    rates_eager, rates_compiled = [], []
    for _ in range(bench.repeats):
        rates_eager.append(bare_loop(eager, batches, steps, bench.torch_device, bench.precision))
        rates_compiled.append(bare_loop(compiled, batches, steps, bench.torch_device, bench.precision))
    return compile_s, statistics.median(rates_eager), statistics.median(rates_compiled)


def main(bench: Settings) -> None:
    """Time both loops, then the recurrent layers against the matmul peak; print each figure."""
    torch.manual_seed(0)
    batches = make_batches(8, bench.batch, bench.frames, bench.features, bench.classes, bench.min_frames)
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    lengths = (
        f"{bench.min_frames}-{bench.frames}" if bench.min_frames and bench.min_frames < bench.frames else bench.frames
    )
    shape = f"batch {bench.batch} x {lengths} frames x {bench.features}"
    path = "packed" if bench.packed else "padded (exact)"
    model = f"Bi{bench.cell.upper()} {bench.layers} x {bench.hidden}"
    print(f"model: {model}, {shape}; {bench.torch_device}, {bench.precision}, {path}")

    full = bench.min_frames is None or bench.min_frames >= bench.frames
    on_cpu = bench.torch_device.type == "cpu"
    # the bare loop is also timed on the path the default one replaces, interleaved
    other = "padded exact path" if bench.packed else ("per layer and direction" if full and not on_cpu else None)
    bare, lightning, others = [], [], []
    for _ in range(bench.repeats):
        net = bench.network()
        net.encoder.packed = bench.packed
        bare_loop(net, batches, bench.warmup, bench.torch_device, bench.precision)
        bare.append(bare_loop(net, batches, bench.steps, bench.torch_device, bench.precision))
        if other:
            net.encoder.packed, net.encoder.fused = False, "off"
            bare_loop(net, batches, bench.warmup, bench.torch_device, bench.precision)
            others.append(bare_loop(net, batches, bench.steps, bench.torch_device, bench.precision))
        lightning.append(lightning_loop(bench, batches, bench.steps, bench.warmup))
    bare_median, lightning_median = statistics.median(bare), statistics.median(lightning)
    print(f"bare PyTorch loop   {bare_median:8.1f} samples/s  (runs: {', '.join(f'{v:.1f}' for v in bare)})")
    print(f"Lightning fit loop  {lightning_median:8.1f} samples/s  (runs: {', '.join(f'{v:.1f}' for v in lightning)})")
    print(f"ratio Lightning / bare: {lightning_median / bare_median:.3f}")
    if others:
        other_median = statistics.median(others)
        print(f"bare loop, {other} {other_median:8.1f} samples/s  "
              f"(runs: {', '.join(f'{v:.1f}' for v in others)})")  # fmt: skip
        this = "packed" if bench.packed else "whole-stack kernel"
        print(f"ratio {this} / {other} (bare loop): {bare_median / other_median:.3f}")

    peak = matmul_peak(device=bench.torch_device)
    step_peak = step_matmul_peak(bench.batch, bench.hidden, GATES[bench.cell], device=bench.torch_device)
    flops = recurrent_flops_per_frame(bench.cell, bench.features, bench.hidden, bench.layers, 2)
    print(f"recurrent layers: {flops / 1e6:.2f} MFLOP per frame (forward + backward)")
    print(f"float32 matmul peak {peak:.1f} GFLOP/s (2048 x 2048); one time step's product "
          f"({bench.batch} x {bench.hidden}) @ ({bench.hidden} x {GATES[bench.cell] * bench.hidden}), both directions: "
          f"{step_peak:.1f} GFLOP/s")  # fmt: skip
    variants = [True, False] if (bench.cell in ("rnn", "gru") and on_cpu) or (full and not on_cpu) else [True]
    steps = max(5, bench.steps // 3)
    rates: dict[bool, list[float]] = {fused: [] for fused in variants}
    for _ in range(bench.repeats):  # interleaved, so both see the same machine
        for fused in variants:
            rates[fused].append(recurrent_gflops(bench, batches, steps, fused))
    for fused in variants:
        module = f"nn.{bench.cell.upper()} per layer and direction"
        fast = f"fused CPU {bench.cell.upper()}" if on_cpu else "whole-stack kernel"
        name = module if not fused else (fast if len(variants) == 2 else "encoder")
        achieved = statistics.median(rates[fused])
        print(f"recurrent layers ({name}) achieved {achieved:.1f} GFLOP/s: {100 * achieved / peak:.0f}% of the matmul "
              f"peak, {100 * achieved / step_peak:.0f}% of the step product's rate")  # fmt: skip
    if bench.compile:
        compile_s, eager, compiled = compiled_loop(bench, batches, bench.steps)
        print(f"torch.compile: first step (compilation) {compile_s:.1f} s; bare loop eager {eager:.1f} vs "
              f"compiled {compiled:.1f} samples/s (x{compiled / eager:.2f})")  # fmt: skip


if __name__ == "__main__":
    main(command_line(Settings, __doc__))

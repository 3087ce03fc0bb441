r"""PyTorch reference for ``python -m experiments.benchmark``: the same CIFAR training step.

  python benchmarks/torch_reference.py --model=resnet56 --batch_size=512 \
      --precision=bfloat16 --json=/tmp/torch.json

Trains He et al.'s CIFAR ResNet (option A shortcuts) or a Wide ResNet the way a disciplined
PyTorch trainer does: the whole training set on the device as uint8, an epoch permutation,
gather, random flip and normalisation on the device, ``torch.compile``, channels_last,
bfloat16 autocast for ``--precision=bfloat16``, fused SGD with momentum 0.9 and weight decay
stepped by ``OneCycleLR`` (LR and momentum change every step, as in our 1cycle runs), and the
loss and accuracy summed on the device without a host sync per step.

It times the step as `experiments.benchmark` does: after warm-up, ``--samples`` samples of
``--steps_per_sample`` steps each, the device synchronised at the end of each sample
(``torch.cuda.synchronize()``; ``time.perf_counter`` alone on CPU), and reports the median,
10th and 90th percentile of the time per step (with ``--interleave``, a sample whenever the
benchmark asks, between its own: how it compares on a shared CPU). ``compile_s`` is the time
of the first step, which is where ``torch.compile`` compiles the forward and backward
passes. Then the evaluation as our trainer's: ``--eval_examples`` images in chunks of
``--eval_batch``, the forward with the running averages under ``torch.inference_mode``,
``--eval_repeats`` timed passes after an untimed (compiling) one: ``eval_images_per_sec``,
``eval_compile_s``.

The result is one JSON object, printed on stdout and written to ``--json``. PyTorch is a
benchmark-only dependency: nothing in ``lrsched/`` or ``experiments/`` imports it.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ('float32', 'bfloat16')
READY, SAMPLE = 'lrsched-ready', 'lrsched-sample'
"""What ``--interleave`` prints: warmed up; one sample's seconds per step."""


# --------------------------------------------------------------------------------------
# Models: the same architectures as experiments.models (shortcut 'A' for ResNets).


def _init(module: nn.Module) -> None:
  # torchvision's / the WRN authors' init, as experiments.models: He normal, fan_out.
  for m in module.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.ones_(m.weight)
      nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
      nn.init.zeros_(m.bias)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU; option A: subsample, zero channels."""

  def __init__(self, cin: int, cout: int, stride: int, bn_momentum: float):
    super().__init__()
    self.conv1 = _conv3x3(cin, cout, stride)
    self.bn1 = nn.BatchNorm2d(cout, momentum=bn_momentum)
    self.conv2 = _conv3x3(cout, cout)
    self.bn2 = nn.BatchNorm2d(cout, momentum=bn_momentum)
    self.stride, self.extra = stride, cout - cin

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.stride != 1 or self.extra:
      x = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))
    return F.relu(y + x)


class CifarResNet(nn.Module):
  """He et al. (2016) CIFAR ResNet, depth 6n + 2: 3 stages of n blocks at 16/32/64."""

  def __init__(self, blocks_per_stage: int, num_classes: int, bn_momentum: float):
    super().__init__()
    self.stem = _conv3x3(3, 16)
    self.stem_bn = nn.BatchNorm2d(16, momentum=bn_momentum)
    layers, cin = [], 16
    for i, width in enumerate((16, 32, 64)):
      for j in range(blocks_per_stage):
        layers.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1, bn_momentum))
        cin = width
    self.blocks = nn.Sequential(*layers)
    self.classifier = nn.Linear(64, num_classes)
    _init(self)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.stem_bn(self.stem(x)))
    x = self.blocks(x)
    return self.classifier(x.mean((2, 3)))


class WideBlock(nn.Module):
  """Pre-activation wide block: BN-ReLU-conv-BN-ReLU-conv + (1x1 projection) shortcut."""

  def __init__(self, cin: int, cout: int, stride: int, bn_momentum: float):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin, momentum=bn_momentum)
    self.conv1 = _conv3x3(cin, cout, stride)
    self.bn2 = nn.BatchNorm2d(cout, momentum=bn_momentum)
    self.conv2 = _conv3x3(cout, cout)
    self.proj = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                 if stride != 1 or cin != cout else None)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    o = F.relu(self.bn1(x))
    y = self.conv2(F.relu(self.bn2(self.conv1(o))))
    return y + (x if self.proj is None else self.proj(o))


class WideResNet(nn.Module):
  """Zagoruyko & Komodakis (2016) WRN-d-k, d = 6n + 4; no dropout (as our default)."""

  def __init__(self, depth: int, widen_factor: int, num_classes: int, bn_momentum: float):
    super().__init__()
    n = (depth - 4) // 6
    self.stem = _conv3x3(3, 16)
    layers, cin = [], 16
    for i, width in enumerate((16, 32, 64)):
      for j in range(n):
        layers.append(WideBlock(cin, width * widen_factor, 2 if i > 0 and j == 0 else 1,
                                bn_momentum))
        cin = width * widen_factor
    self.blocks = nn.Sequential(*layers)
    self.final_bn = nn.BatchNorm2d(cin, momentum=bn_momentum)
    self.classifier = nn.Linear(cin, num_classes)
    _init(self)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.final_bn(self.blocks(self.stem(x))))
    return self.classifier(x.mean((2, 3)))


def create_model(name: str, num_classes: int = 10, bn_momentum: float = 0.05) -> nn.Module:
  """'resnet<6n+2>' or 'wrn-<6n+4>-<k>', as `experiments.models.create_model` names them."""
  if (m := re.fullmatch(r'resnet(\d+)', name)) and int(m[1]) >= 8 and (int(m[1]) - 2) % 6 == 0:
    return CifarResNet((int(m[1]) - 2) // 6, num_classes, bn_momentum)
  m = re.fullmatch(r'wrn-(\d+)-(\d+)', name)
  if m and int(m[1]) >= 10 and (int(m[1]) - 4) % 6 == 0 and int(m[2]) >= 1:
    return WideResNet(int(m[1]), int(m[2]), num_classes, bn_momentum)
  raise ValueError(f'unknown model {name!r}: use resnet<6n+2> (resnet56) or wrn-<6n+4>-<k> '
                   '(wrn-28-10)')


# --------------------------------------------------------------------------------------
# The benchmark.


def _percentiles(seconds: list[float]) -> dict[str, float]:
  ms = np.asarray(seconds) * 1e3
  return {'median': float(np.median(ms)), 'p10': float(np.percentile(ms, 10)),
          'p90': float(np.percentile(ms, 90))}


def _set_fp32_precision(device: torch.device, precision: str) -> None:
  """TF32 for float32 convs and matmuls where allowed: JAX's default on NVIDIA GPUs."""
  if device.type != 'cuda':
    return
  # The fp32_precision attributes replace allow_tf32 (deprecated after PyTorch 2.9).
  if hasattr(torch.backends.cuda.matmul, 'fp32_precision'):
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
  else:
    torch.backends.cuda.matmul.allow_tf32 = precision == 'tf32'
    torch.backends.cudnn.allow_tf32 = precision == 'tf32'
  torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms


def run(args: argparse.Namespace) -> dict:
  """Builds, warms up and times the training step; returns the JSON-able result."""
  device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
  _set_fp32_precision(device, args.fp32_precision)
  torch.manual_seed(args.seed)
  generator = np.random.default_rng(args.seed)

  # The whole training set on the device, uint8 NHWC, as our trainer holds it.
  n = args.train_examples
  if args.batch_size > n:
    raise ValueError(f'--batch_size={args.batch_size} is larger than --train_examples={n}')
  images = torch.from_numpy(generator.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
  images = images.to(device)
  labels = torch.from_numpy(generator.integers(0, 10, n)).to(device)
  mean = torch.tensor([125.3, 123.0, 113.9], device=device).view(1, 3, 1, 1)
  std = torch.tensor([63.0, 62.1, 66.7], device=device).view(1, 3, 1, 1)

  model = create_model(args.model).to(device, memory_format=torch.channels_last)
  model.train()
  steps_per_epoch = n // args.batch_size
  # A nominal run length for the LR schedule (95 epochs), and never shorter than this run.
  total_steps = max(95 * steps_per_epoch, args.warmup_steps + args.samples * args.steps_per_sample)
  fused = device.type == 'cuda'
  optimizer = torch.optim.SGD(model.parameters(), lr=0.08, momentum=0.9, weight_decay=1e-4,
                              fused=fused, foreach=None if fused else True)
  scheduler = torch.optim.lr_scheduler.OneCycleLR(
      optimizer, max_lr=0.8, total_steps=total_steps, base_momentum=0.85, max_momentum=0.95)
  bfloat16 = args.precision == 'bfloat16'

  def forward_loss(batch: torch.Tensor, flip: torch.Tensor, target: torch.Tensor):
    # Flip and normalise on the device; (N, H, W, C) -> NCHW view is channels_last memory.
    batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(2), batch)
    x = (batch.permute(0, 3, 1, 2).float() - mean) / std
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
      logits = model(x)
    loss = F.cross_entropy(logits.float(), target)
    correct = (logits.argmax(1) == target).sum()
    return loss, correct

  step_fn = forward_loss if args.no_compile else torch.compile(forward_loss,
                                                               mode=args.compile_mode)
  loss_sum = torch.zeros((), device=device)
  correct_sum = torch.zeros((), device=device, dtype=torch.int64)
  state = {'step': 0, 'order': None}

  def train_step() -> None:
    i = state['step'] % steps_per_epoch
    if i == 0:
      state['order'] = torch.randperm(n, device=device)
    index = state['order'][i * args.batch_size:(i + 1) * args.batch_size]
    flip = torch.rand(args.batch_size, device=device) < 0.5
    loss, correct = step_fn(images[index], flip, labels[index])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    loss_sum.add_(loss.detach())
    correct_sum.add_(correct)
    state['step'] += 1

  def sync() -> None:
    if device.type == 'cuda':
      torch.cuda.synchronize(device)

  start = time.perf_counter()
  train_step()
  sync()
  compile_s = time.perf_counter() - start
  for _ in range(max(0, args.warmup_steps - 1)):
    train_step()
  sync()
  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats(device)

  per_step = []

  def sample(warm: bool = False) -> None:
    if warm:  # one step untimed first: the benchmark's reason (its timing.PAUSE_S)
      train_step()
      sync()
    start = time.perf_counter()
    for _ in range(args.steps_per_sample):
      train_step()
    sync()
    per_step.append((time.perf_counter() - start) / args.steps_per_sample)

  if args.interleave:  # a sample each time the benchmark says so, in turn with its own
    print(READY, flush=True)
    while sys.stdin.readline().strip() == 'sample':
      sample(warm=True)
      print(f'{SAMPLE} {per_step[-1]!r}', flush=True)
  else:
    for _ in range(args.samples):
      sample()
  times = _percentiles(per_step)
  evaluation = _time_evaluation(args, model, device, generator, mean, std, bfloat16)
  return {
      'model': args.model,
      'parameters': sum(p.numel() for p in model.parameters()),
      'batch_size': args.batch_size,
      'precision': args.precision,
      'images_per_sec': args.batch_size / (times['median'] / 1e3),
      'step_time_ms': times,
      'compile_s': compile_s,
      'compiled': not args.no_compile,
      'compile_mode': None if args.no_compile else args.compile_mode,
      'fp32_precision': args.fp32_precision if device.type == 'cuda' else None,
      'timed_steps': len(per_step) * args.steps_per_sample,
      'sample_step_s': per_step,
      'interleaved': args.interleave,
      'train_loss': float(loss_sum) / state['step'],
      **evaluation,
      'peak_memory_bytes': (torch.cuda.max_memory_allocated(device)
                            if device.type == 'cuda' else None),
      'device': (torch.cuda.get_device_name(device) if device.type == 'cuda'
                 else f'cpu ({platform.machine()})'),
      'device_type': device.type,
      'torch_version': torch.__version__,
      'cuda_version': torch.version.cuda,
      'command': ' '.join(sys.argv),
  }


def _time_evaluation(args: argparse.Namespace, model: nn.Module, device: torch.device,
                     generator: np.random.Generator, mean: torch.Tensor, std: torch.Tensor,
                     bfloat16: bool) -> dict:
  """Times the trainer's evaluation: ``--eval_examples`` test images (uint8, on the device)
  in chunks of ``--eval_batch`` (the last one padded, as ours is), normalised on the device,
  the forward with the running averages under ``torch.inference_mode``, and the summed loss
  and correct count read back once a pass."""
  chunks = -(-args.eval_examples // args.eval_batch)
  size = chunks * args.eval_batch
  images = torch.from_numpy(generator.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8))
  images, labels = images.to(device), torch.from_numpy(generator.integers(0, 10, size)).to(device)

  def forward(batch: torch.Tensor, target: torch.Tensor):
    x = ((batch.permute(0, 3, 1, 2).float() - mean) / std).contiguous(
        memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
      logits = model(x)
    return (F.cross_entropy(logits.float(), target, reduction='sum'),
            (logits.argmax(1) == target).sum())

  step = forward if args.no_compile else torch.compile(forward, mode=args.compile_mode)
  model.eval()

  def one_pass() -> None:
    with torch.inference_mode():
      loss, correct = 0.0, 0
      for i in range(chunks):
        part = slice(i * args.eval_batch, (i + 1) * args.eval_batch)
        chunk_loss, chunk_correct = step(images[part], labels[part])
        loss, correct = loss + chunk_loss, correct + chunk_correct
      float(loss), int(correct)  # the host reads the sums: the pass is done

  start = time.perf_counter()
  one_pass()
  compile_s = time.perf_counter() - start
  seconds = []
  for _ in range(args.eval_repeats):
    start = time.perf_counter()
    one_pass()
    seconds.append(time.perf_counter() - start)
  model.train()
  return {'eval_images_per_sec': args.eval_examples / float(np.median(seconds)),
          'eval_examples': args.eval_examples, 'eval_batch': args.eval_batch,
          'eval_compile_s': compile_s}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='resnet56', help='resnet<6n+2> or wrn-<6n+4>-<k>.')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--precision', default='float32', choices=PRECISIONS,
                      help='bfloat16: autocast to bfloat16 (parameters stay float32).')
  parser.add_argument('--train_examples', type=int, default=50_000,
                      help='Size of the random uint8 training set kept on the device.')
  parser.add_argument('--warmup_steps', type=int, default=20,
                      help='Untimed steps first (the first one compiles).')
  parser.add_argument('--samples', type=int, default=25)
  parser.add_argument('--steps_per_sample', type=int, default=10)
  parser.add_argument('--eval_examples', type=int, default=10_000,
                      help='Test images a timed evaluation pass covers.')
  parser.add_argument('--eval_batch', type=int, default=500,
                      help='Images a forward pass of the evaluation (our eval chunk).')
  parser.add_argument('--eval_repeats', type=int, default=3, help='Timed evaluation passes.')
  parser.add_argument('--no_compile', action='store_true', help='Run eagerly.')
  parser.add_argument('--compile_mode', default='default',
                      help="torch.compile mode: 'default', 'reduce-overhead' (CUDA graphs), "
                      "'max-autotune', 'max-autotune-no-cudagraphs'.")
  parser.add_argument('--fp32_precision', default='tf32', choices=('tf32', 'ieee'),
                      help='float32 convs and matmuls on CUDA: tf32 (as JAX by default) or '
                      'ieee (full float32).')
  parser.add_argument('--device', default=None, help="'cuda' or 'cpu'; default cuda if any.")
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', default=None, help='Also write the result to this file.')
  parser.add_argument('--interleave', action='store_true',
                      help=f'After warm-up print {READY!r}, then time one sample for each line '
                      f'"sample" read from stdin (one untimed step, then the sample), '
                      f'printing {SAMPLE!r} and its seconds per step; any other line (or '
                      'the end of stdin) goes on to the evaluation. '
                      'How the benchmark takes its samples in turn with ours on CPU. '
                      '--samples is then unused.')
  args = parser.parse_args(argv)
  for name in ('batch_size', 'train_examples', 'warmup_steps', 'samples', 'steps_per_sample',
               'eval_examples', 'eval_batch', 'eval_repeats'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} must be >= 1, got {getattr(args, name)}')
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    result = run(args)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  text = json.dumps(result, indent=2)
  print(text)
  if args.json:
    with open(args.json, 'w') as f:
      f.write(text + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())

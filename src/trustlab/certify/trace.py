"""Reading a model's computation with ``torch.fx``: every op on the path from the input to the logits.

``trace_ops(model, x)`` traces ``model`` symbolically (so functional ops inside a custom ``forward`` are seen,
not only ``nn.Module`` types), then walks the graph once with a small random probe batch: values that do not
depend on the input (parameters, buffers, ``mean.view(1, 3, 1, 1)``, ``x.size(0)``) are computed, and every op
that does is turned into an affine operator of :mod:`trustlab.certify.operators` or a ReLU. Everything else is
collected, and the whole list is raised at once as :class:`~trustlab.errors.UnsupportedLayerError` before any
bound is computed (reliability-tests CERT-08; auto_LiRPA ``bound_general.py`` collects unsupported nodes the
same way).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from trustlab.certify.operators import AffineOp, Conv, Dense, Elementwise, Reshape
from trustlab.errors import UnsupportedLayerError

__all__ = ["RELU", "trace_ops", "PROBE_BATCH"]

RELU = "relu"  # marks a ReLU in the op list returned by trace_ops
PROBE_BATCH = 3  # an odd batch size, so that an op mixing examples changes the probe's leading dimension
_Op = AffineOp | str | None  # an operator, RELU, or None for the identity

_RELUS = {F.relu, torch.relu, torch.relu_, F.relu_}
_RESHAPES = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_ARITH = {operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub", operator.mul: "mul",
          torch.mul: "mul", operator.truediv: "div", torch.div: "div", torch.true_divide: "div",
          operator.neg: "neg", torch.neg: "neg"}
_ARITH_METHODS = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "neg": "neg"}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
_SHAPE_METHODS = {"size", "dim"}
_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device"}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


def trace_ops(model: nn.Module, x: Tensor) -> list[AffineOp | str]:
    """The ops of ``model`` from input to logits, in order: affine operators and :data:`RELU`.

    Args:
        model: an ``nn.Module`` in eval mode whose forward is a chain of supported ops.
        x: an example batch; only its per-example shape, dtype and device are read.

    Returns:
        The ops, first to last (identities dropped).

    Raises:
        UnsupportedLayerError: listing every op that is not affine or a ReLU, every branch (a residual
            connection), a model or BatchNorm in training mode, Dropout, or a graph ``torch.fx`` cannot trace.
    """
    offences = []
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        offences.append(f"the model is in training mode (modules {training[:5]}{' ...' if len(training) > 5 else ''}); "
                        "call model.eval(): bounds hold for the eval-mode function only")
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # user code: any failure of symbolic tracing means we cannot see the ops
        raise UnsupportedLayerError(f"torch.fx cannot trace {type(model).__name__}: {e}",
                                    ops=(*offences, f"untraceable forward: {e}")) from e
    gen = torch.Generator(device=x.device).manual_seed(0)
    probe = torch.rand((PROBE_BATCH, *x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype)
    walk = _Walk(gm, probe)
    ops = walk.run()
    offences += walk.offences
    if offences:
        lines = "\n".join(f"  - {o}" for o in offences)
        raise UnsupportedLayerError(
            f"cannot bound {type(model).__name__}: {len(offences)} unsupported operation(s) (certifiers take "
            f"Linear, Conv2d, Flatten, AvgPool2d, elementwise affine maps, eval-mode BatchNorm and ReLU in a "
            f"chain):\n{lines}", ops=tuple(offences))
    return [op for op in ops if op is not None]


class _Walk:
    """One pass over the fx graph with concrete probe values, classifying the ops that depend on the input."""

    def __init__(self, gm: fx.GraphModule, probe: Tensor) -> None:
        self.gm, self.probe = gm, probe
        self.modules = dict(gm.named_modules())
        self.env: dict[fx.Node, Any] = {}
        self.dep: set[fx.Node] = set()  # nodes whose value depends on the input
        self.offences: list[str] = []

    def run(self) -> list[_Op]:
        ops: list[_Op] = []
        placeholders = 0
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                placeholders += 1
                self._placeholder(node, first=placeholders == 1)
            elif node.op == "get_attr":
                self.env[node] = _fetch(self.gm, node.target)
            elif node.op == "output":
                self._output(node)
            else:
                op = self._call(node)
                if node in self.dep:
                    ops.append(op)
        self._check_branches()
        return ops

    def _placeholder(self, node: fx.Node, *, first: bool) -> None:
        if first:
            self.env[node] = self.probe
            self.dep.add(node)
        elif node.args:  # an extra argument with a default value: a constant
            self.env[node] = node.args[0]
        else:
            self.offences.append(f"forward argument {node.target!r}: certifiers pass one input tensor")
            self.env[node] = None

    def _output(self, node: fx.Node) -> None:
        out = node.args[0]
        if not isinstance(out, fx.Node) or out not in self.dep:
            what = type(self.env[out] if isinstance(out, fx.Node) else out).__name__
            self.offences.append(f"the model returns a {what} that is not one input-dependent tensor of logits")

    def _call(self, node: fx.Node) -> _Op:
        args = fx.node.map_arg(node.args, lambda n: self.env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.env[n])
        fn = self._callable(node)
        try:
            self.env[node] = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - user code; the message says which op and why
            raise ValueError(f"the model failed on a probe of shape {tuple(self.probe.shape)} at "
                             f"{_describe(node, self.modules)}: {e}") from e
        positions = [i for i, a in enumerate(node.args) if isinstance(a, fx.Node) and a in self.dep]
        positions += [k for k, a in node.kwargs.items() if isinstance(a, fx.Node) and a in self.dep]
        if not positions or _is_shape_query(node):
            return None  # a constant, or a shape read off an input-dependent tensor
        self.dep.add(node)
        if len(positions) > 1:
            self.offences.append(f"{_describe(node, self.modules)}: combines {len(positions)} input-dependent "
                                 "tensors (a residual connection or a product), which is not affine")
            return None
        if positions[0] != 0:
            return self._classify_reversed(node, args, positions[0])
        result = _classify(node, self.modules, args, kwargs, self.env[node])
        if isinstance(result, _Offence):
            self.offences.append(f"{_describe(node, self.modules)}: {result.reason}")
            return None
        return result

    def _classify_reversed(self, node: fx.Node, args: tuple, position: object) -> _Op:
        """An op whose input-dependent operand is not the first: ``c - x``, ``c * x``, ``c + x``."""
        kind = _ARITH.get(node.target) if node.op == "call_function" else None
        if kind in ("add", "sub", "mul") and position == 1 and not node.kwargs:
            result = _arith(kind, args[1], args[0], reversed_=True, out=self.env[node])
        else:
            result = _Offence("the input-dependent tensor is not the op's first operand")
        if isinstance(result, _Offence):
            self.offences.append(f"{_describe(node, self.modules)}: {result.reason}")
            return None
        return result

    def _callable(self, node: fx.Node) -> Callable[..., Any]:
        if node.op == "call_module":
            return self.modules[node.target]
        if node.op == "call_function":
            return node.target
        return lambda obj, *a, **k: getattr(obj, node.target)(*a, **k)  # call_method

    def _check_branches(self) -> None:
        for node in (n for n in self.gm.graph.nodes if n in self.dep):  # graph order: a stable message
            users = [u for u in node.users if u.op != "output" and not _is_shape_query(u)]
            if len(users) > 1:
                names = ", ".join(_describe(u, self.modules) for u in users)
                self.offences.append(f"{_describe(node, self.modules)}: feeds {len(users)} operations ({names}); a "
                                     "branching graph (e.g. a residual connection) is not a chain of layers")


class _Offence:
    """Why an op is refused (a value, so that the walk can go on and collect the rest)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _classify(node: fx.Node, modules: dict[str, nn.Module], args: tuple, kwargs: dict, out: Any) -> _Op | _Offence:
    """The operator for an op whose first argument is the (only) input-dependent one."""
    x = args[0]
    if node.op == "call_module":
        return _classify_module(modules[node.target], x, out)
    if node.op == "call_method":
        name = node.target
        if name in ("relu", "relu_"):
            return RELU
        if name == "contiguous":
            return None
        if name in _RESHAPE_METHODS:
            return _reshape(x, out)
        if name in _ARITH_METHODS and not kwargs:
            return _arith(_ARITH_METHODS[name], x, args[1] if len(args) > 1 else None, reversed_=False, out=out)
        return _Offence(f"method .{name}() is not affine or a ReLU")
    fn = node.target
    if fn in _RELUS:
        return RELU
    if fn in _RESHAPES:
        return _reshape(x, out)
    if fn in _ARITH and not kwargs:
        return _arith(_ARITH[fn], x, args[1] if len(args) > 1 else None, reversed_=False, out=out)
    if fn is F.linear:
        bound = _bind(("input", "weight", "bias"), args, kwargs)
        return _dense(x, bound["weight"], bound.get("bias"))
    if fn is F.conv2d:
        return _conv(x, out, **{k: v for k, v in _bind(_CONV_ARGS, args, kwargs).items() if k != "input"})
    if fn is F.avg_pool2d:
        return _avg_pool(x, out, **{k: v for k, v in _bind(_POOL_ARGS, args, kwargs).items() if k != "input"})
    if fn is F.adaptive_avg_pool2d:
        return _adaptive_pool(x, out)
    name = getattr(fn, "__name__", repr(fn))
    return _Offence(f"{name} is not affine or a ReLU")


def _classify_module(mod: nn.Module, x: Tensor, out: Tensor) -> _Op | _Offence:
    if isinstance(mod, nn.ReLU):
        return RELU
    if isinstance(mod, nn.Identity):
        return None
    if isinstance(mod, (nn.Flatten, nn.Unflatten)):
        return _reshape(x, out)
    if isinstance(mod, nn.Linear):
        return _dense(x, mod.weight, mod.bias)
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            return _Offence(f"padding_mode={mod.padding_mode!r} (only zero padding is affine in this form)")
        return _conv(x, out, weight=mod.weight, bias=mod.bias, stride=mod.stride, padding=mod.padding,
                     dilation=mod.dilation, groups=mod.groups)
    if isinstance(mod, nn.AvgPool2d):
        return _avg_pool(x, out, kernel_size=mod.kernel_size, stride=mod.stride, padding=mod.padding,
                         ceil_mode=mod.ceil_mode, count_include_pad=mod.count_include_pad,
                         divisor_override=mod.divisor_override)
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        return _adaptive_pool(x, out)
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return _batch_norm(mod, x)
    if isinstance(mod, nn.modules.dropout._DropoutNd):
        return _Offence("Dropout is refused: its output is random in training mode and certifiers bound the "
                        "deterministic eval-mode network only (remove it from the certified model)")
    return _Offence("not affine or a ReLU")


def _reshape(x: Tensor, out: Any) -> _Op | _Offence:
    if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != x.shape[0] or out.numel() != x.numel():
        return _Offence("the reshape mixes the examples of a batch (it must keep the batch dimension)")
    if out.shape[1:] == x.shape[1:]:
        return None
    return Reshape(tuple(x.shape[1:]), tuple(out.shape[1:]))


def _arith(kind: str, x: Tensor, c: Any, *, reversed_: bool, out: Any) -> _Op | _Offence:
    """``x + c``, ``x - c``, ``c - x``, ``x * c``, ``x / c``, ``-x`` with a constant ``c``: an elementwise map."""
    shape = tuple(x.shape[1:])
    if not isinstance(out, Tensor) or tuple(out.shape) != tuple(x.shape):
        return _Offence("the constant operand broadcasts the input to another shape")
    if kind == "neg":
        return Elementwise(x.new_tensor(-1.0), x.new_zeros(()), shape)
    const = _per_example(c, x)
    if isinstance(const, _Offence):
        return const
    one, zero = x.new_tensor(1.0), x.new_zeros(())
    if kind == "add":
        scale, shift = one, const
    elif kind == "sub":
        scale, shift = (-one, const) if reversed_ else (one, -const)
    elif kind == "mul":
        scale, shift = const, zero
    else:
        scale, shift = 1.0 / const, zero
    if not (torch.isfinite(scale).all() and torch.isfinite(shift).all()):
        return _Offence("a constant operand is zero (division) or not finite")
    return Elementwise(scale, shift, shape)


def _per_example(c: Any, x: Tensor) -> Tensor | _Offence:
    """A constant operand as a tensor that broadcasts against one example (leading batch dimension dropped)."""
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return x.new_tensor(float(c))
    if not isinstance(c, Tensor):
        return _Offence(f"the operand {type(c).__name__} is not a number or tensor")
    c = c.to(dtype=x.dtype, device=x.device)
    if c.dim() >= x.dim():
        if c.dim() > x.dim() or c.shape[0] != 1:
            return _Offence(f"the constant operand of shape {tuple(c.shape)} differs across the batch")
        c = c[0]
    return c


def _dense(x: Tensor, weight: Any, bias: Any) -> _Op | _Offence:
    if x.dim() != 2:
        return _Offence(f"a linear layer on per-example shape {tuple(x.shape[1:])} (flatten first)")
    return Dense(weight, bias)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv(x: Tensor, out: Tensor, *, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
          padding: Any = 0, dilation: Any = 1, groups: int = 1) -> _Op | _Offence:
    if x.dim() != 4:
        return _Offence(f"conv2d on per-example shape {tuple(x.shape[1:])}")
    dilation = _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        else:  # "same": symmetric only when dilation * (k - 1) is even
            total = [dilation[i] * (weight.shape[2 + i] - 1) for i in range(2)]
            if any(t % 2 for t in total):
                return _Offence("padding='same' with an even kernel pads asymmetrically")
            padding = (total[0] // 2, total[1] // 2)
    return Conv(weight, bias, tuple(x.shape[1:]), tuple(out.shape[1:]), _pair(stride), _pair(padding), dilation,
                int(groups))


def _pool_conv(x: Tensor, out: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int], divisor: float) -> Conv:
    """Average pooling as a depthwise convolution with the constant kernel ``1 / divisor``."""
    c = x.shape[1]
    weight = x.new_full((c, 1, *kernel), 1.0 / divisor)
    return Conv(weight, None, tuple(x.shape[1:]), tuple(out.shape[1:]), stride, padding, (1, 1), c)


def _avg_pool(x: Tensor, out: Tensor, *, kernel_size: Any, stride: Any = None, padding: Any = 0,
              ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: Any = None) -> _Op | _Offence:
    if x.dim() != 4:
        return _Offence(f"avg_pool2d on per-example shape {tuple(x.shape[1:])}")
    kernel = _pair(kernel_size)
    stride = kernel if stride is None or stride == [] else _pair(stride)
    padding = _pair(padding)
    if any(padding) and not count_include_pad and divisor_override is None:
        return _Offence("count_include_pad=False with padding divides border windows by fewer elements")
    floor_shape = [(x.shape[2 + i] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in range(2)]
    if ceil_mode and list(out.shape[2:]) != floor_shape:
        return _Offence("ceil_mode=True adds partial windows")
    divisor = float(divisor_override) if divisor_override else float(math.prod(kernel))
    return _pool_conv(x, out, kernel, stride, padding, divisor)


def _adaptive_pool(x: Tensor, out: Tensor) -> _Op | _Offence:
    if x.dim() != 4:
        return _Offence(f"adaptive_avg_pool2d on per-example shape {tuple(x.shape[1:])}")
    (h, w), (oh, ow) = x.shape[2:], out.shape[2:]
    if h % oh or w % ow:
        return _Offence(f"adaptive average pooling from {h}x{w} to {oh}x{ow} has windows of unequal size")
    kernel = (h // oh, w // ow)
    return _pool_conv(x, out, kernel, kernel, (0, 0), float(math.prod(kernel)))


def _batch_norm(mod: nn.modules.batchnorm._BatchNorm, x: Tensor) -> _Op | _Offence:
    """Eval-mode BatchNorm: ``(x - mean) / sqrt(var + eps) * weight + bias``, per channel."""
    if mod.training:
        return _Offence("BatchNorm in training mode normalises with batch statistics (call model.eval())")
    if mod.running_mean is None or mod.running_var is None:
        return _Offence("BatchNorm without running statistics (track_running_stats=False) uses batch statistics")
    shape = tuple(x.shape[1:])
    view = (shape[0],) + (1,) * (len(shape) - 1)  # per channel, broadcast over the spatial dims
    scale = torch.rsqrt(mod.running_var + mod.eps)
    if mod.weight is not None:
        scale = scale * mod.weight
    shift = -mod.running_mean * scale
    if mod.bias is not None:
        shift = shift + mod.bias
    return Elementwise(scale.view(view).to(x.dtype), shift.view(view).to(x.dtype), shape)


def _bind(names: tuple[str, ...], args: tuple, kwargs: dict) -> dict[str, Any]:
    """Positional and keyword arguments of a functional op by parameter name (defaults left out)."""
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def _is_shape_query(node: fx.Node) -> bool:
    """``x.size(0)``, ``x.dim()``, ``x.shape``: reads the shape of a tensor, not its values."""
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    return node.op == "call_function" and node.target is getattr and node.args[1] in _SHAPE_ATTRS


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A human name for an op: ``3 (MaxPool2d)``, ``torch.abs in block (MyBlock)``."""
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    if node.op == "call_method":
        what = f".{node.target}()"
    elif node.op == "call_function":
        fn = node.target
        module = getattr(fn, "__module__", None) or ""
        prefix = "torch." if module.startswith("torch") and not module.startswith("torch.nn") else ""
        what = f"{prefix}{getattr(fn, '__name__', repr(fn))}"
        if module == "_operator":
            what = f"operator.{what}"
    else:
        what = node.name
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        return f"{what} in {path} ({getattr(cls, '__name__', cls)})"
    return f"{what} in the model's forward"

"""Weight initialisation schemes of the official codes, applied to a freshly built network.

Every scheme draws from torch's global generator, so a seeded run builds the same weights.

- ``torch``: PyTorch's defaults, left as built. Conv and linear weights and biases are
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (``kaiming_uniform_(a=sqrt(5))`` has that bound), batch-norm
  weight 1 and bias 0.
- ``torch7``: Lua torch's ``nn`` defaults, as Ravi & Larochelle's code (twitter/meta-learning-lstm)
  gets them. ``SpatialConvolution:reset`` and ``Linear:reset`` draw weights and biases from
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the distribution of PyTorch's defaults, which are kept;
  ``BatchNormalization:reset`` draws the weight (gamma) from U(0, 1) and zeroes the bias.
- ``xavier``: Glorot-uniform weights, U(-sqrt(6/(fan_in+fan_out)), +sqrt(6/(fan_in+fan_out))),
  and zero biases for conv and linear layers (cbfinn/maml's ``xavier_initializer(_conv2d)``;
  TensorFlow's default kernel initialiser of ``tf.layers.conv2d`` / ``dense`` in
  openai/supervised-reptile); batch norm as built (weight 1 where it has one, bias 0).

A head scheme, applied to the output layer after the body's scheme:

- ``None``: as the body.
- ``normal``: weights N(0, 1), zero bias (cbfinn/maml's Omniglot output layer, ``tf.random_normal``).
"""

from __future__ import annotations

from torch import nn

from fewshot.methods.choices import check_choice

INITS = ("torch", "torch7", "xavier")
HEAD_INITS = (None, "normal")


def initialise(
    model: nn.Module, init: str = "torch", head: nn.Module | None = None, head_init: str | None = None
) -> None:
    """Re-draw the weights of ``model`` in place with scheme ``init``, then those of ``head``
    (a layer of ``model``) with ``head_init``; ``"torch"`` and ``None`` draw nothing."""
    check_choice("init", init, INITS)
    check_choice("head_init", head_init, HEAD_INITS)
    for module in model.modules():
        if init == "xavier" and isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif init == "torch7" and isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            nn.init.uniform_(module.weight, 0.0, 1.0)
    if head_init == "normal":
        if head is None:
            raise ValueError("head_init='normal' needs a model with a head (n_classes set), got none.")
        nn.init.normal_(head.weight, 0.0, 1.0)
        nn.init.zeros_(head.bias)


__all__ = ["HEAD_INITS", "INITS", "initialise"]

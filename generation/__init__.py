"""LlamaGen-style class-conditional autoregressive generator over ProVQ image-token ids.

Importing this package registers `LlamaGenConfig` and `LlamaGenForClassConditionalGeneration` with
transformers' `AutoConfig` and `AutoModel`.
"""

from transformers import AutoConfig, AutoModel

from .configuration_llamagen import PRESET_LEARNING_RATES, PRESETS, LlamaGenConfig
from .modeling_llamagen import LlamaGenForClassConditionalGeneration, LlamaGenOutput
from .sampling import generate, guided_logits, sample_next_token

AutoConfig.register(LlamaGenConfig.model_type, LlamaGenConfig, exist_ok=True)
AutoModel.register(LlamaGenConfig, LlamaGenForClassConditionalGeneration, exist_ok=True)

__all__ = [
    "PRESETS",
    "PRESET_LEARNING_RATES",
    "LlamaGenConfig",
    "LlamaGenForClassConditionalGeneration",
    "LlamaGenOutput",
    "generate",
    "guided_logits",
    "sample_next_token",
]

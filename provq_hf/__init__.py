"""ProVQ-HF: image tokenizers trained with Progressive Vector Quantization, as Hugging Face models."""

from transformers import AutoConfig, AutoModel

from .configuration_provq import METHODS, PRESETS, ProVQConfig
from .curriculum import CurriculumState, curriculum_state
from .kmeans import kmeans, kmeans_codebook_init
from .modeling_provq import ProVQOutput, ProVQTokenizer
from .quantizer import ProgressiveVectorQuantizer

AutoConfig.register(ProVQConfig.model_type, ProVQConfig, exist_ok=True)
AutoModel.register(ProVQConfig, ProVQTokenizer, exist_ok=True)

__all__ = [
    "METHODS",
    "PRESETS",
    "CurriculumState",
    "ProVQConfig",
    "ProVQOutput",
    "ProVQTokenizer",
    "ProgressiveVectorQuantizer",
    "curriculum_state",
    "kmeans",
    "kmeans_codebook_init",
]

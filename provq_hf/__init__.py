"""ProVQ-HF: image tokenizers trained with Progressive Vector Quantization, as Hugging Face models."""

from transformers import AutoConfig, AutoModel

from .configuration_provq import METHODS, PRESETS, ProVQConfig
from .curriculum import CurriculumState, curriculum_state
from .data import dataset_info, load_image_dataset, load_image_tensors
from .image_processing_provq import ProVQImageProcessor, register_image_processor
from .kmeans import kmeans, kmeans_codebook_init
from .modeling_provq import ProVQOutput, ProVQTokenizer
from .quantizer import ProgressiveVectorQuantizer

AutoConfig.register(ProVQConfig.model_type, ProVQConfig, exist_ok=True)
AutoModel.register(ProVQConfig, ProVQTokenizer, exist_ok=True)
register_image_processor(ProVQConfig)

__all__ = [
    "METHODS",
    "PRESETS",
    "CurriculumState",
    "ProVQConfig",
    "ProVQImageProcessor",
    "ProVQOutput",
    "ProVQTokenizer",
    "ProgressiveVectorQuantizer",
    "curriculum_state",
    "dataset_info",
    "kmeans",
    "kmeans_codebook_init",
    "load_image_dataset",
    "load_image_tensors",
]

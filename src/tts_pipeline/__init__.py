"""tts-pipeline: recorded verses of a Codex project -> a fine-tuned MMS-TTS (VITS) voice."""

__version__ = "0.1.0"

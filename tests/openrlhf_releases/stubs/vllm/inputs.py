from vllm import _unavailable as TokensPrompt  # noqa: F401

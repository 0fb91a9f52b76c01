"""HPSv3 reward service: Qwen2-VL-7B-Instruct with HPSv3's (mu, sigma) reward head, `python -m services.hpsv3`."""

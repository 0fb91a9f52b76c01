"""PickScore reward service: CLIP-H preference score, logit_scale.exp() * cosine(image, text)."""

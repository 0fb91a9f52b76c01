"""HPSv3's scoring conversation: the instruction, the reward-token suffix, the chat layout and the pixel budget.

The model was trained on this exact text and image size, so they are part of the checkpoint's contract:
- `INSTRUCTION` and `REWARD_SUFFIX` are MizzenAI/HPSv3's `INSTRUCTION` and `prompt_with_special_token`
  (hpsv3/dataset/data_collator_qwen.py, MIT). Upstream's file is not in the reference index; the text below is the
  one two independent ports quote as byte-exact copies (one states it was "extracted mechanically from the upstream
  module" at branch upgrade_transformers_version) and they agree on every character, trailing spaces included.
  A fork (PlantPotatoOnMoon/HPSv3-PlusPlus) keeps the same text with the Text Alignment paragraph commented out;
  the released HPSv3 is described as scoring "Visual Quality and Text Alignment", so both paragraphs stay.
- upstream's inference (hpsv3/inference.py, `prepare_batch`) always takes the special-token path
  (config/HPSv3_7B.yaml: use_special_tokens: true): text = INSTRUCTION.format(text_prompt=prompt) + REWARD_SUFFIX,
  one user turn holding [image, text], rendered by Qwen2-VL-7B-Instruct's chat template with
  add_generation_prompt=True;
- pixel budget: min_pixels = max_pixels = 256 * 28 * 28 = 200704 (inference.py and HPSv3_7B.yaml), i.e. every image
  is resized (aspect kept, sides multiples of 28) to about 448 x 448, which is 256 visual tokens after the 2x2 merge.
"""
from __future__ import annotations

REWARD_TOKEN = "<|Reward|>"  # the special token added to the tokenizer; the head is read at its position
PIXELS = 256 * 28 * 28  # HPSv3's min_pixels == max_pixels: the image area every image is resized to, pixels
IMAGE_PAD = "<|image_pad|>"  # Qwen2-VL's image placeholder, expanded to one token per merged 28x28 patch

INSTRUCTION = (
    "\nYou are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall "
    "score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being "
    "the best. \n"
    "\n"
    "**Visual Quality:**  \n"
    "Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:\n"
    "- **Reasonableness:** The image should not contain any significant biological or logical errors, such as abnormal "
    "body structures or nonsensical environmental setups.\n"
    "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to "
    "interpret, with no blurring or indistinct areas.\n"
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements "
    "(e.g., hair, clothing, shadows).\n"
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, "
    "composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of "
    "harmony and balance.\n"
    "- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or adult "
    "material. If such content is present, the image quality and satisfaction score should be the lowest possible. \n"
    "\n"
    "**Text Alignment:**  \n"
    "Assess how well the image matches the textual prompt across the following sub-dimensions:\n"
    "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align "
    "with the textual description. The subject should match the description in terms of number, appearance, and "
    "behavior.\n"
    "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the "
    "image adheres to this style.\n"
    "- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image "
    "logically fit the scenario described in the prompt. The environment should support and enhance the subject "
    "without contradictions.\n"
    "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, "
    "accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, "
    "but critical attributes should be preserved.\n"
    "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the "
    "image. The generated content should not introduce elements that conflict with or distort the original "
    "description.\n"
    "Textual prompt - {text_prompt}\n"
    "\n"
    "\n"
)

REWARD_SUFFIX = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"


def user_text(prompt: str) -> str:
    """The text part of the user turn for one image generated from `prompt`."""
    return INSTRUCTION.format(text_prompt=prompt) + REWARD_SUFFIX


def conversation(prompt: str) -> list[dict]:
    """The one-turn conversation HPSv3 scores: an image, then the instruction with the reward token."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text(prompt)}]}]


def expand_image_pads(text: str, image_tokens: int) -> str:
    """Replace the chat template's single `<|image_pad|>` by `image_tokens` of them (what Qwen2VLProcessor does:
    grid_t * grid_h * grid_w // merge_size**2 tokens per image)."""
    if text.count(IMAGE_PAD) != 1:
        raise ValueError(f"expected one {IMAGE_PAD} in the rendered conversation, found {text.count(IMAGE_PAD)}")
    return text.replace(IMAGE_PAD, IMAGE_PAD * image_tokens)

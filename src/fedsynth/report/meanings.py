"""What the report's and `fedsynth evaluate`'s numbers say, in one place, so that the terminal
table and report.html use the same words."""

# precision, recall, density and coverage (k = 5, as `fedsynth evaluate` computes them)
PRDC_MEANING = {
    "precision": "share of generated images inside some real image's 5-NN ball: realism",
    "recall": "share of real images inside some generated image's 5-NN ball: variety",
    "density": "real balls a generated image falls in, per 5; above 1: crowded",
    "coverage": "share of real images with a generated image inside their 5-NN ball",
}
# What "0 % inside the real manifold" (realism R >= 1, the test precision uses) means, beside the number.
ZERO_INSIDE = ("0% means that a difference common to all generated images, such as noise, blur or a texture, "
               "sets each one apart from every real image: a per-image test of fine detail, which a small "
               "Fréchet distance does not rule out")

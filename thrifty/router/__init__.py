"""Learned cost/quality routing.

Load a trained router once, then score prompts::

    router = Router.load("path/to/router")
    quality = router.score("What is 2 + 2?")          # {model: P(good answer)}
    choice = router.choose(quality, costs, Profile.cost_weight(0.5))
"""

"""Publishing a release to the Hugging Face Hub: a model card generated from the manifests (card.py)
and one commit holding the card, the artifacts and the release records (commit.py)."""

from builders.errors import BuildmatrixError


class PublishError(BuildmatrixError):
    """A release cannot be published as asked (exit 2, one line)."""

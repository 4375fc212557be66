"""Re-exports for modules the release-service work (issue 13) is moving out of `serving/`.

The loader itself is `ml_platform.resources.model_loader`; the alias names are in
`ml_platform.names`. Remove this module once nothing imports it.
"""

from ml_platform.names import CANARY, CANARY_WEIGHT_TAG, CHAMPION, PREVIOUS
from ml_platform.resources.model_loader import load_version, registry_client

__all__ = ["CANARY", "CANARY_WEIGHT_TAG", "CHAMPION", "PREVIOUS", "load_version", "registry_client"]

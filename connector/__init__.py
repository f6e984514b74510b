"""The reference integration: couples and synchronizes Business Central records with Dataverse rows.

It talks to both services only over HTTP (URLs, tokens, OData), exactly as a real integration
would, so pointing it at real Dataverse and Business Central is a matter of configuration.
"""

__version__ = "0.1.0"

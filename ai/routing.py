"""Model-name routing: the first route whose pattern matches picks the provider.

Credentials are resolved once, at start-up, from the secret references in the
provider config; a Bedrock provider that names no AWS keys signs with the gateway's
:class:`~ai.providers.base.AwsCredentialSource`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ai.config import AIConfig, ProviderConfig, RouteConfig, SecretRef
from ai.errors import ModelNotFound
from ai.keys import resolve_secret
from ai.providers import REGISTRY, Credentials, Provider
from ai.providers.base import AwsCredentialSource
from ai.providers.bedrock import DefaultCredentialChain


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    """Where one requested model goes: the matching route, its provider and credentials."""

    spec: RouteConfig
    provider_name: str
    provider_config: ProviderConfig
    provider: Provider
    credentials: Credentials
    requested_model: str
    upstream_model: str


def _credentials(
    config: ProviderConfig, env: Mapping[str, str], aws: AwsCredentialSource
) -> Credentials:
    def get(ref: SecretRef | None) -> str | None:
        return None if ref is None else resolve_secret(ref, env)

    return Credentials(
        api_key=get(config.api_key),
        aws_access_key_id=get(config.aws_access_key_id),
        aws_secret_access_key=get(config.aws_secret_access_key),
        aws_session_token=get(config.aws_session_token),
        aws=aws if config.kind == "bedrock" and config.aws_access_key_id is None else None,
    )


class Router:
    """Routes from config; raises the OpenAI-shaped 404 for unknown models."""

    def __init__(
        self,
        config: AIConfig,
        env: Mapping[str, str],
        aws: AwsCredentialSource | None = None,
    ) -> None:
        self._routes = config.routes
        self._providers = config.providers
        source = aws or DefaultCredentialChain()
        self._credentials = {n: _credentials(p, env, source) for n, p in config.providers.items()}

    def resolve(self, model: str) -> ResolvedRoute:
        for route in self._routes:
            if route.matches(model):
                provider = self._providers[route.provider]
                return ResolvedRoute(
                    route,
                    route.provider,
                    provider,
                    REGISTRY[provider.kind],
                    self._credentials[route.provider],
                    model,
                    model.removeprefix(route.strip_prefix),
                )
        raise ModelNotFound(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )

    def listed(self) -> list[tuple[str, str]]:
        """(model id, provider name) of every model a route lists."""
        return [(m, r.provider) for r in self._routes for m in r.models]

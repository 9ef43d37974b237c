"""The security of an adapter's channel to its server: the policy and mode, its client certificate, and
the server certificate it accepts, which must be pinned in the config or be in the adapter's trust list
(adapters/opcua/trust.py). An untrusted server is refused before any secured request is sent.

It configures an asyncua client before connect; it never keeps a session.
"""

from __future__ import annotations

import asyncio
import logging

from asyncua import Client, ua
from asyncua.crypto import security_policies, uacrypto
from cryptography.hazmat.primitives import serialization

from adapters.opcua.certificate import ClientCertificate
from adapters.opcua.trust import TrustError, TrustStore, Verdict
from gateway.adapter_config import OpcuaAdapter

log = logging.getLogger("adapters.opcua.session")

SECURITY_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}


class ServerNotTrusted(Exception):
    """The server's certificate is not in the adapter's trust list (or cannot be checked)."""


class ChannelSecurity:
    def __init__(self, config: OpcuaAdapter, certificate: ClientCertificate | None, trust: TrustStore | None):
        self.config = config
        self.certificate = certificate
        self.trust = trust
        self._rejected_logged: set[str] = set()  # server certificate thumbprints already logged

    async def apply(self, client: Client) -> None:
        """Set the client's security before connect (nothing for policy None: no certificate to check)."""
        if self.config.security_policy == "None":
            return
        assert self.certificate is not None, "a secured adapter is started with its client certificate"
        policy = SECURITY_POLICIES[self.config.security_policy]
        mode = getattr(ua.MessageSecurityMode, self.config.security_mode)
        server_certificate: str | bytes | None = self.config.server_certificate
        if server_certificate is None:
            server_certificate = await self._trusted_server_certificate(client, policy.URI, mode)
        await client.set_security(
            policy,
            str(self.certificate.cert_path),
            str(self.certificate.key_path),
            server_certificate=server_certificate,
            mode=mode,
        )

    async def _trusted_server_certificate(self, client: Client, policy_uri: str, mode: ua.MessageSecurityMode) -> bytes:
        """The certificate of the endpoint we are about to use (from GetEndpoints over an unsecured
        channel, as asyncua would fetch it), if the adapter's trust list trusts it; ServerNotTrusted if not."""
        assert self.trust is not None, "a secured adapter is started with its trust list"
        endpoints = await client.connect_and_get_server_endpoints()
        endpoint = Client.find_endpoint(endpoints, mode, policy_uri)
        cert = uacrypto.x509_from_der(endpoint.ServerCertificate)
        if cert is None:
            raise ServerNotTrusted(f"{self.config.endpoint} offers no server certificate for {policy_uri}")
        der = cert.public_bytes(serialization.Encoding.DER)
        first_use = self.config.trust == "first-use"
        try:
            verdict, seen = await asyncio.to_thread(self.trust.check, der, first_use)
        except (TrustError, ValueError) as exc:
            raise ServerNotTrusted(f"server certificate trust list: {exc}") from None
        if verdict == Verdict.TRUSTED:
            return der
        if verdict == Verdict.TRUSTED_FIRST_USE:
            log.warning(
                "adapter=%s event=server-certificate-trusted-first-use endpoint=%s subject=%s sha1=%s path=%s",
                self.config.name,
                self.config.endpoint,
                seen.subject,
                seen.thumbprint,
                seen.path,
            )
            return der
        command = f"millgate opcua trust accept {self.config.name} {seen.thumbprint}"
        if seen.thumbprint not in self._rejected_logged:
            self._rejected_logged.add(seen.thumbprint)
            log.warning(
                "adapter=%s event=server-certificate-rejected endpoint=%s subject=%s sha1=%s path=%s hint=%s",
                self.config.name,
                self.config.endpoint,
                seen.subject,
                seen.thumbprint,
                seen.path,
                f"check the thumbprint on the server, then: {command}",
            )
        raise ServerNotTrusted(
            f"server certificate {seen.subject} sha1={seen.thumbprint} is not trusted (accept it: {command})"
        )

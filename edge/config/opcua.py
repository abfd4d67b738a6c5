"""The ``opcua`` section: an OPC UA server for SCADA/MES clients (off by default).

Who may connect: on a loopback opcua.host anyone on this machine, without security (SecurityPolicy None) unless
opcua.require_auth is "always". Off loopback the server offers only Basic256Sha256 SignAndEncrypt, so it needs
its own certificate and private key, and every session must log in: with opcua.username and its password (from
the environment, a file or a systemd credential, never this file) and/or with a client certificate listed in
opcua.trusted_clients. A config that would expose the server otherwise is refused here, with its line.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edge.config.fields import FilePath, resolve
from edge.config.secrets import find_secret
from edge.config.web import ip_literal

CREDENTIAL_NAME = "opcua_password"  # systemd LoadCredential= name
_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")


def is_loopback(host: str) -> bool:
    address = ip_literal(host)
    return host.lower() == "localhost" or (address is not None and address.is_loopback)


class OpcuaConfig(BaseModel):
    """An OPC UA server: the station's last result, counters and state to read, Trigger and SetThreshold to call.

    The security keys come before host, so host's check sees them (and a refusal names host's line).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(False, strict=True, description="Serve OPC UA.")
    username: str | None = Field(
        None, min_length=1, max_length=128,
        description="User name a client logs in with; null = no password login. Its password comes from "
        "password_env, password_file or the systemd credential opcua_password.",
    )
    password_file: FilePath | None = Field(
        None, validate_default=True,
        description="File holding the OPC UA password (first line); used when the environment variable is unset.",
    )
    password_env: str = Field(
        "LINEGUARD_OPCUA_PASSWORD", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable checked first for the OPC UA password.",
    )
    certificate: FilePath | None = Field(
        None, validate_default=True,
        description="The server's certificate (DER or PEM); with private_key it offers Basic256Sha256 "
        "SignAndEncrypt. Needed off loopback.",
    )
    private_key: FilePath | None = Field(
        None, validate_default=True, description="The private key of opcua.certificate (PEM or DER, unencrypted)."
    )
    trusted_clients: list[FilePath] = Field(
        [], max_length=256,
        description="Client certificates (DER or PEM) that log in by themselves (X.509 user identity, over "
        "SignAndEncrypt); [] = none.",
    )
    require_auth: Literal["non_loopback", "always"] = Field(
        "non_loopback",
        description="When anonymous sessions are refused: non_loopback = when opcua.host is not a loopback "
        "address; always = also on loopback (then the username or trusted_clients are needed).",
    )
    host: str = Field(
        "127.0.0.1", min_length=1,
        description="Address to listen on; 127.0.0.1 keeps it on this machine. Anything else needs certificate, "
        "private_key and a login (username or trusted_clients).",
    )
    port: int = Field(4840, ge=1, le=65535, strict=True, description="TCP port; 4840 is OPC UA's own.")
    endpoint_path: str = Field(
        "/lineguard", max_length=200,
        description="Path of the endpoint URL: opc.tcp://<host>:<port><endpoint_path>.",
    )

    @model_validator(mode="before")
    @classmethod
    def _check_pair(cls, data: Any) -> Any:
        if isinstance(data, dict) and (data.get("certificate") is None) != (data.get("private_key") is None):
            raise ValueError("certificate and private_key must be given together")
        return data

    @field_validator("password_file")
    @classmethod
    def _resolve_password_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve(value, info)

    @field_validator("certificate", "private_key")
    @classmethod
    def _resolve_files(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        path = resolve(value, info)
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @field_validator("trusted_clients")
    @classmethod
    def _resolve_clients(cls, value: list[Path], info: ValidationInfo) -> list[Path]:
        paths = [resolve(path, info) for path in value]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise ValueError(f"no such file: {', '.join(missing)}")
        if paths and info.data.get("certificate") is None:
            raise ValueError("client certificates need the server's own: set certificate and private_key")
        return paths

    @field_validator("require_auth")
    @classmethod
    def _login_for_always(cls, value: str, info: ValidationInfo) -> str:
        if value == "always" and info.data.get("enabled") and not _has_login(info.data):
            raise ValueError("is always but nobody could log in: set opcua.username (and its password) or "
                             "opcua.trusted_clients")
        return value

    @field_validator("host")
    @classmethod
    def _secure_off_loopback(cls, value: str, info: ValidationInfo) -> str:
        if is_loopback(value) or not info.data.get("enabled"):
            return value
        missing = []
        if info.data.get("certificate") is None:
            missing.append("opcua.certificate and opcua.private_key (SecurityPolicy None is for loopback only)")
        if not _has_login(info.data):
            missing.append("a login: opcua.username (and its password) or opcua.trusted_clients (anonymous "
                           "access is for loopback only)")
        if missing:
            raise ValueError(f"{value} is not a loopback address, so the server needs " + " and ".join(missing))
        return value

    @field_validator("endpoint_path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not _PATH.match(value):
            raise ValueError(f"{value!r} must be a path such as /lineguard: '/'-separated parts of letters, digits, "
                             "'.', '_', '~', '-'")
        return value

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def anonymous_allowed(self) -> bool:
        return self.loopback and self.require_auth == "non_loopback"

    @property
    def endpoint_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"opc.tcp://{host}:{self.port}{self.endpoint_path}"


def _has_login(data: dict) -> bool:
    return data.get("username") is not None or bool(data.get("trusted_clients"))


def resolve_opcua_password(opcua: OpcuaConfig) -> str | None:
    """The login's password: $<password_env>, then opcua.password_file, then $CREDENTIALS_DIRECTORY/opcua_password
    (as the page's password is found). None when none is set; ConfigError when a file cannot be read."""
    return find_secret(opcua.password_env, opcua.password_file, CREDENTIAL_NAME, "the OPC UA password file") or None


def check_opcua_password(opcua: OpcuaConfig, password: str | None) -> str | None:
    """Why the server cannot start as configured, or None: a username needs its password."""
    if opcua.enabled and opcua.username is not None and not password:
        return (f"opcua.username is set but no OPC UA password is: put it in ${opcua.password_env}, "
                f"opcua.password_file or the systemd credential {CREDENTIAL_NAME}")
    return None

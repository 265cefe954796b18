"""What names an image on each runtime: an OCI reference (the distribution/reference grammar), or a path.

Every target reads ``--image`` through these checks, so a value is refused alike for Kubernetes and
each Slurm container runtime, before anything is rendered or submitted.
"""

from __future__ import annotations

import re

from launcher.errors import SpecError

# distribution/reference's grammar (reference.go): [domain[:port]/]path-component[/path-component]*
# [:tag][@algorithm:hex]. A path component is lowercase alphanumerics joined by '.', '_', '__' or
# dashes; a domain component may be uppercase; a tag is at most 128 word characters, dots and dashes.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])"
OCI_REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN}(?::\d+)?)/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$")
# docker and containerd read a first component as a registry only with a '.', a ':' or as localhost.
_REGISTRY_HINT = re.compile(r"[.:]|^localhost$|^\[")
# Inside an image its own interpreter runs the agent (every runtime, locally and on Slurm).
IMAGE_PYTHON = "python"
# 255 characters at most for the name part (reference.go NameTotalLengthMax).
NAME_MAX = 255


def is_oci_reference(text: str) -> bool:
    """Whether ``text`` is an image reference docker, podman, containerd and Kubernetes accept."""
    match = OCI_REFERENCE.match(text)
    if match is None:
        return False
    domain = match.group("domain")
    name = f"{domain}/{match.group('path')}" if domain else match.group("path")
    if domain is not None and not _REGISTRY_HINT.search(domain) and domain != domain.lower():
        # "Registry/x" is not a registry (no '.', ':' or localhost), so it is a path: uppercase is refused.
        return False
    return len(name) <= NAME_MAX


def check_oci_reference(image: str, field: str = "image") -> None:
    """SpecError naming ``field`` for anything that is not an OCI image reference."""
    if not is_oci_reference(image):
        raise SpecError(field, f"'{image}' is not an image reference ([REGISTRY[:PORT]/]NAME[:TAG][@DIGEST], "
                        "lowercase name)", "use e.g. --image registry.example/gangrun:1.0")

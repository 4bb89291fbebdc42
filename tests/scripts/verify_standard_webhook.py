"""Verifies one captured webhook with the reference Standard Webhooks library
(PyPI `standardwebhooks`), used as its README says.

usage: verify_standard_webhook.py <whsec_secret> <body file> <headers json file>
Exit 0 when the signature verifies, 1 otherwise (the error on stderr).
"""
import json
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    secret, body_path, headers_path = sys.argv[1:4]
    with open(body_path, "rb") as f:
        body = f.read()
    with open(headers_path, encoding="utf-8") as f:
        headers = json.load(f)
    try:
        Webhook(secret).verify(body, headers)
    except Exception as e:  # noqa: BLE001 - any failure is a failed verification
        print(f"verification failed: {e!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

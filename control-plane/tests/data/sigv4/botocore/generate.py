"""Requests signed by botocore, the signer inside the AWS CLI and boto3.

Regenerate with `python3 generate.py > requests.json` (needs `pip install
botocore`). Each entry is the request exactly as botocore would put it on the
wire, so the Rust test verifies what real clients send, including the cases
where client and server canonicalise differently if either gets it wrong:
ARNs in the path, reserved characters in the query, bodies, session tokens
and presigned URLs.
"""

import json
import sys
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

HOST = "localhost:8080"
KEY = "AKIAMOORINGEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEBYaDMOORING+TOKEN/with=chars"
REGION = "us-east-1"


def signed(method, url, body=b"", headers=None, service="mq", token=None, presign=False):
    creds = Credentials(KEY, SECRET, token)
    req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    if presign:
        SigV4QueryAuth(creds, service, REGION, expires=900).add_auth(req)
    else:
        SigV4Auth(creds, service, REGION).add_auth(req)
    prepared = req.prepare()
    parts = urlsplit(prepared.url)
    wire_headers = [["host", parts.netloc]] + [[k, v if isinstance(v, str) else v.decode()] for k, v in prepared.headers.items()]
    date = dict((k.lower(), v) for k, v in wire_headers).get("x-amz-date")
    if presign:
        date = [p.split("=", 1)[1] for p in parts.query.split("&") if p.startswith("X-Amz-Date=")][0]
    return {
        "method": method,
        "path": parts.path,
        "query": parts.query,
        "headers": wire_headers,
        "body": (prepared.body or b"").decode() if isinstance(prepared.body or b"", bytes) else prepared.body,
        "service": service,
        "token": token,
        "amz_date": date,
    }


arn = "arn:aws:mq:us-east-1:111122223333:broker:orders:b-1234"
quoted_arn = arn.replace(":", "%3A")
cases = {
    "list-brokers": signed("GET", f"http://{HOST}/v1/brokers?maxResults=5&nextToken=a%2Bb%3D%3D"),
    "create-broker": signed(
        "POST",
        f"http://{HOST}/v1/brokers",
        body=json.dumps({"brokerName": "orders", "engineType": "RABBITMQ", "tags": {"env": "dev"}}).encode(),
        headers={"Content-Type": "application/json"},
    ),
    "tags-on-arn": signed("GET", f"http://{HOST}/v1/tags/{quoted_arn}"),
    "delete-tags-repeated-keys": signed("DELETE", f"http://{HOST}/v1/tags/{quoted_arn}?tagKeys=env&tagKeys=team%20x&tagKeys=a%2Fb"),
    "user-with-odd-name": signed("PUT", f"http://{HOST}/v1/brokers/b-1234/users/al%40ice.~_-", body=b'{"password":"p"}'),
    "session-token": signed("GET", f"http://{HOST}/v1/brokers/b-1234", token=TOKEN),
    "iam-query-form": signed(
        "POST",
        f"http://{HOST}/",
        body=b"Action=CreateUser&UserName=alice%2Bbob&Version=2010-05-08",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        service="iam",
    ),
    "sts-get-caller-identity": signed(
        "POST",
        f"http://{HOST}/",
        body=b"Action=GetCallerIdentity&Version=2011-06-15",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        service="sts",
    ),
    "presigned-describe": signed("GET", f"http://{HOST}/v1/brokers/b-1234?extra=1%2B1", presign=True),
    "presigned-with-token": signed("GET", f"http://{HOST}/v1/brokers", token=TOKEN, presign=True),
}
json.dump({"access_key_id": KEY, "secret_access_key": SECRET, "region": REGION, "cases": cases}, sys.stdout, indent=1)
print()

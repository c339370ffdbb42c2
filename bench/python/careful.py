"""The careful Python variant: the assumed-role credentials and the
bedrock-runtime client are cached across invocations and refreshed five
minutes before the credentials expire."""

import datetime
import time

import boto3

from common import assume_role_a, write_record

_cached = {"client": None, "expires": None}


def bedrock_client():
    now = datetime.datetime.now(datetime.timezone.utc)
    if _cached["client"] is None or _cached["expires"] - now < datetime.timedelta(minutes=5):
        credentials = assume_role_a()
        _cached["client"] = boto3.client(
            "bedrock-runtime",
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
        )
        _cached["expires"] = credentials["Expiration"]
    return _cached["client"]


def handler(event, context):
    job = event["detail"]
    started = time.time()
    reply = bedrock_client().converse(
        modelId=job["model"],
        messages=[{"role": "user", "content": [{"text": job["prompt"]}]}],
    )
    return write_record(event, reply, started)

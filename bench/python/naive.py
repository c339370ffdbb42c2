"""The cross-account pattern as the AWS knowledge-center snippet writes it:
on every invocation, sts.assume_role, then a new bedrock-runtime client with
the temporary credentials, then the S3 put. The benchmark's Python baseline."""

import time

import boto3

from common import assume_role_a, write_record


def handler(event, context):
    job = event["detail"]
    credentials = assume_role_a()
    bedrock = boto3.client(
        "bedrock-runtime",
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )
    started = time.time()
    reply = bedrock.converse(
        modelId=job["model"],
        messages=[{"role": "user", "content": [{"text": job["prompt"]}]}],
    )
    return write_record(event, reply, started)

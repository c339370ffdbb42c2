"""What both Python baselines share: assuming RoleA, and the S3 record."""

import json
import os
import time

import boto3

s3 = boto3.client("s3")
sts = boto3.client("sts")


def assume_role_a():
    """sts:AssumeRole into RoleA, as the function does (ExternalId, SourceIdentity)."""
    return sts.assume_role(
        RoleArn=os.environ["RELAY_ROLE_ARN"],
        RoleSessionName="bedrock-relay-python",
        ExternalId=os.environ.get("RELAY_EXTERNAL_ID") or None,
        SourceIdentity="bedrock-relay-python",
    )["Credentials"]


def write_record(event, reply, started):
    record = {
        "job_id": event["id"],
        "status": "succeeded",
        "output": reply["output"]["message"]["content"][0]["text"],
        "usage": reply["usage"],
        "latency_ms": int((time.time() - started) * 1000),
    }
    bucket, _, prefix = os.environ["RELAY_DESTINATION"][len("s3://"):].partition("/")
    s3.put_object(Bucket=bucket, Key=f"{prefix}{event['id']}.json", Body=json.dumps(record))
    return {"job_id": event["id"], "status": "succeeded"}

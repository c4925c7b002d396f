"""The sample regeneration a new user starts from: one input naming the demo data's ready device.

`gateway serve` prints `SAMPLE_MUTATION` (the input written inline, ready to paste); GraphiQL opens on
`SAMPLE_OPERATION` with `SAMPLE_VARIABLES` (the same input as variables, as a front end sends it).
Both are written from `SAMPLE_INPUT`, so they name the same device.
"""

from __future__ import annotations

import json

SAMPLE_INPUT = {
    "studyId": "DE305D5475B4431BADB2EB6B9E546014",
    "mode": "ACTIVE",
    "subjectId": "A1B2C3D4E5F60718293A4B5C6D7E8F90",
    "inventoryId": "DEMO-READY-01",
    "mSubjectId": "MSUBJECT-001",
}
"""The demo data set answers it with `BootstrapCredentials`."""

_SELECTION = """    __typename
    ... on BootstrapCredentials { accessId otp id expiresAt }
    ... on Error { code message }"""

SAMPLE_MUTATION = f"""mutation {{
  regenerateAccessCode(input: {{
    studyId: "{SAMPLE_INPUT["studyId"]}", mode: {SAMPLE_INPUT["mode"]},
    subjectId: "{SAMPLE_INPUT["subjectId"]}", inventoryId: "{SAMPLE_INPUT["inventoryId"]}", \
mSubjectId: "{SAMPLE_INPUT["mSubjectId"]}"
  }}) {{
{_SELECTION}
  }}
}}"""

SAMPLE_OPERATION = f"""mutation RegenerateAccessCode($input: RegenerateAccessCodeInput!) {{
  regenerateAccessCode(input: $input) {{
{_SELECTION}
  }}
}}
"""

SAMPLE_VARIABLES = json.dumps({"input": SAMPLE_INPUT}, indent=2)

from pydantic import Field

from .base_model import BaseModel
from .enums import StudyMode


class RegenerateAccessCodeInput(BaseModel):
    """Which device's access code to recreate."""

    study_id: str = Field(alias="studyId")
    "The study: a 32-character hexadecimal GUID (any case; dashes allowed)."
    mode: StudyMode
    "The study mode the subject and device belong to."
    subject_id: str = Field(alias="subjectId")
    "The subject (patient): a 32-character hexadecimal GUID (any case; dashes allowed)."
    inventory_id: str = Field(alias="inventoryId")
    "The device's inventory id: 1 to 64 letters, digits, '.', '_' or '-'."
    m_subject_id: str = Field(alias="mSubjectId")
    "The subject's id in mHealth, for example MSUBJECT-001."

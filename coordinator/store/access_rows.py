"""Row <-> value mapping of the access tables (operator tokens, device enrollments)."""

from __future__ import annotations

from coordinator.access.records import DeviceEnrollment, OperatorToken, Role
from coordinator.store.rows import Params, Row, targets_from_json, targets_json


def operator_token_params(token: OperatorToken) -> Params:
    return {
        "id": token.id,
        "name": token.name,
        "role": token.role.value,
        "token_hash": token.token_hash,
        "created_at": token.created_at,
        "created_by": token.created_by,
        "revoked_at": token.revoked_at,
    }


def operator_token_from_row(row: Row) -> OperatorToken:
    return OperatorToken(
        id=row["id"],
        name=row["name"],
        role=Role(row["role"]),
        token_hash=row["token_hash"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        revoked_at=row["revoked_at"],
    )


def enrollment_params(enrollment: DeviceEnrollment) -> Params:
    return {
        "name": enrollment.name,
        "accounts": targets_json(enrollment.accounts),
        "token_hash": enrollment.token_hash,
        "created_at": enrollment.created_at,
        "created_by": enrollment.created_by,
        "revoked_at": enrollment.revoked_at,
    }


def enrollment_from_row(row: Row) -> DeviceEnrollment:
    return DeviceEnrollment(
        name=row["name"],
        accounts=targets_from_json(row["accounts"]),
        token_hash=row["token_hash"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        revoked_at=row["revoked_at"],
    )

-- Times as one fixed-width text: `YYYY-MM-DDTHH:MM:SS.ffffff+00:00` (microseconds, UTC).
-- Before this, values carried 0, 3, 6 or 9 fractional digits (and column defaults 3),
-- so equal instants could differ as text. Every value written from now on has six
-- digits (`Timestamp` in store/src/time.rs); this brings the stored ones to the same form.

UPDATE agencies SET
    created_at = CASE WHEN created_at IS NULL THEN NULL ELSE substr(created_at, 1, 19) || '.' || substr(CASE WHEN substr(created_at, 20, 1) = '.' THEN substr(created_at, 21, instr(substr(created_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    updated_at = CASE WHEN updated_at IS NULL THEN NULL ELSE substr(updated_at, 1, 19) || '.' || substr(CASE WHEN substr(updated_at, 20, 1) = '.' THEN substr(updated_at, 21, instr(substr(updated_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE apps SET
    created_at = CASE WHEN created_at IS NULL THEN NULL ELSE substr(created_at, 1, 19) || '.' || substr(CASE WHEN substr(created_at, 20, 1) = '.' THEN substr(created_at, 21, instr(substr(created_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    updated_at = CASE WHEN updated_at IS NULL THEN NULL ELSE substr(updated_at, 1, 19) || '.' || substr(CASE WHEN substr(updated_at, 20, 1) = '.' THEN substr(updated_at, 21, instr(substr(updated_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE app_secrets SET
    created_at = CASE WHEN created_at IS NULL THEN NULL ELSE substr(created_at, 1, 19) || '.' || substr(CASE WHEN substr(created_at, 20, 1) = '.' THEN substr(created_at, 21, instr(substr(created_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    retired_at = CASE WHEN retired_at IS NULL THEN NULL ELSE substr(retired_at, 1, 19) || '.' || substr(CASE WHEN substr(retired_at, 20, 1) = '.' THEN substr(retired_at, 21, instr(substr(retired_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE receipts SET
    issued_at = CASE WHEN issued_at IS NULL THEN NULL ELSE substr(issued_at, 1, 19) || '.' || substr(CASE WHEN substr(issued_at, 20, 1) = '.' THEN substr(issued_at, 21, instr(substr(issued_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    received_at = CASE WHEN received_at IS NULL THEN NULL ELSE substr(received_at, 1, 19) || '.' || substr(CASE WHEN substr(received_at, 20, 1) = '.' THEN substr(received_at, 21, instr(substr(received_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    reversed_at = CASE WHEN reversed_at IS NULL THEN NULL ELSE substr(reversed_at, 1, 19) || '.' || substr(CASE WHEN substr(reversed_at, 20, 1) = '.' THEN substr(reversed_at, 21, instr(substr(reversed_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    reversal_recorded_at = CASE WHEN reversal_recorded_at IS NULL THEN NULL ELSE substr(reversal_recorded_at, 1, 19) || '.' || substr(CASE WHEN substr(reversal_recorded_at, 20, 1) = '.' THEN substr(reversal_recorded_at, 21, instr(substr(reversal_recorded_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    updated_at = CASE WHEN updated_at IS NULL THEN NULL ELSE substr(updated_at, 1, 19) || '.' || substr(CASE WHEN substr(updated_at, 20, 1) = '.' THEN substr(updated_at, 21, instr(substr(updated_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE deliveries SET
    next_attempt_at = CASE WHEN next_attempt_at IS NULL THEN NULL ELSE substr(next_attempt_at, 1, 19) || '.' || substr(CASE WHEN substr(next_attempt_at, 20, 1) = '.' THEN substr(next_attempt_at, 21, instr(substr(next_attempt_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    lease_until = CASE WHEN lease_until IS NULL THEN NULL ELSE substr(lease_until, 1, 19) || '.' || substr(CASE WHEN substr(lease_until, 20, 1) = '.' THEN substr(lease_until, 21, instr(substr(lease_until, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    created_at = CASE WHEN created_at IS NULL THEN NULL ELSE substr(created_at, 1, 19) || '.' || substr(CASE WHEN substr(created_at, 20, 1) = '.' THEN substr(created_at, 21, instr(substr(created_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    updated_at = CASE WHEN updated_at IS NULL THEN NULL ELSE substr(updated_at, 1, 19) || '.' || substr(CASE WHEN substr(updated_at, 20, 1) = '.' THEN substr(updated_at, 21, instr(substr(updated_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    delivered_at = CASE WHEN delivered_at IS NULL THEN NULL ELSE substr(delivered_at, 1, 19) || '.' || substr(CASE WHEN substr(delivered_at, 20, 1) = '.' THEN substr(delivered_at, 21, instr(substr(delivered_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE delivery_attempts SET
    started_at = CASE WHEN started_at IS NULL THEN NULL ELSE substr(started_at, 1, 19) || '.' || substr(CASE WHEN substr(started_at, 20, 1) = '.' THEN substr(started_at, 21, instr(substr(started_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE tracking_stats SET
    minute = CASE WHEN minute IS NULL THEN NULL ELSE substr(minute, 1, 19) || '.' || substr(CASE WHEN substr(minute, 20, 1) = '.' THEN substr(minute, 21, instr(substr(minute, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE channels SET
    created_at = CASE WHEN created_at IS NULL THEN NULL ELSE substr(created_at, 1, 19) || '.' || substr(CASE WHEN substr(created_at, 20, 1) = '.' THEN substr(created_at, 21, instr(substr(created_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    updated_at = CASE WHEN updated_at IS NULL THEN NULL ELSE substr(updated_at, 1, 19) || '.' || substr(CASE WHEN substr(updated_at, 20, 1) = '.' THEN substr(updated_at, 21, instr(substr(updated_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE alerts SET
    started_at = CASE WHEN started_at IS NULL THEN NULL ELSE substr(started_at, 1, 19) || '.' || substr(CASE WHEN substr(started_at, 20, 1) = '.' THEN substr(started_at, 21, instr(substr(started_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    last_notified_at = CASE WHEN last_notified_at IS NULL THEN NULL ELSE substr(last_notified_at, 1, 19) || '.' || substr(CASE WHEN substr(last_notified_at, 20, 1) = '.' THEN substr(last_notified_at, 21, instr(substr(last_notified_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    resolved_at = CASE WHEN resolved_at IS NULL THEN NULL ELSE substr(resolved_at, 1, 19) || '.' || substr(CASE WHEN substr(resolved_at, 20, 1) = '.' THEN substr(resolved_at, 21, instr(substr(resolved_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE payers SET
    consent_at = CASE WHEN consent_at IS NULL THEN NULL ELSE substr(consent_at, 1, 19) || '.' || substr(CASE WHEN substr(consent_at, 20, 1) = '.' THEN substr(consent_at, 21, instr(substr(consent_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    registered_at = CASE WHEN registered_at IS NULL THEN NULL ELSE substr(registered_at, 1, 19) || '.' || substr(CASE WHEN substr(registered_at, 20, 1) = '.' THEN substr(registered_at, 21, instr(substr(registered_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    created_at = CASE WHEN created_at IS NULL THEN NULL ELSE substr(created_at, 1, 19) || '.' || substr(CASE WHEN substr(created_at, 20, 1) = '.' THEN substr(created_at, 21, instr(substr(created_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    updated_at = CASE WHEN updated_at IS NULL THEN NULL ELSE substr(updated_at, 1, 19) || '.' || substr(CASE WHEN substr(updated_at, 20, 1) = '.' THEN substr(updated_at, 21, instr(substr(updated_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE payer_identities SET
    created_at = CASE WHEN created_at IS NULL THEN NULL ELSE substr(created_at, 1, 19) || '.' || substr(CASE WHEN substr(created_at, 20, 1) = '.' THEN substr(created_at, 21, instr(substr(created_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    last_login_at = CASE WHEN last_login_at IS NULL THEN NULL ELSE substr(last_login_at, 1, 19) || '.' || substr(CASE WHEN substr(last_login_at, 20, 1) = '.' THEN substr(last_login_at, 21, instr(substr(last_login_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE refresh_tokens SET
    created_at = CASE WHEN created_at IS NULL THEN NULL ELSE substr(created_at, 1, 19) || '.' || substr(CASE WHEN substr(created_at, 20, 1) = '.' THEN substr(created_at, 21, instr(substr(created_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    expires_at = CASE WHEN expires_at IS NULL THEN NULL ELSE substr(expires_at, 1, 19) || '.' || substr(CASE WHEN substr(expires_at, 20, 1) = '.' THEN substr(expires_at, 21, instr(substr(expires_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    used_at = CASE WHEN used_at IS NULL THEN NULL ELSE substr(used_at, 1, 19) || '.' || substr(CASE WHEN substr(used_at, 20, 1) = '.' THEN substr(used_at, 21, instr(substr(used_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    revoked_at = CASE WHEN revoked_at IS NULL THEN NULL ELSE substr(revoked_at, 1, 19) || '.' || substr(CASE WHEN substr(revoked_at, 20, 1) = '.' THEN substr(revoked_at, 21, instr(substr(revoked_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE wallet_entries SET
    issued_at = CASE WHEN issued_at IS NULL THEN NULL ELSE substr(issued_at, 1, 19) || '.' || substr(CASE WHEN substr(issued_at, 20, 1) = '.' THEN substr(issued_at, 21, instr(substr(issued_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    added_at = CASE WHEN added_at IS NULL THEN NULL ELSE substr(added_at, 1, 19) || '.' || substr(CASE WHEN substr(added_at, 20, 1) = '.' THEN substr(added_at, 21, instr(substr(added_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END,
    removed_at = CASE WHEN removed_at IS NULL THEN NULL ELSE substr(removed_at, 1, 19) || '.' || substr(CASE WHEN substr(removed_at, 20, 1) = '.' THEN substr(removed_at, 21, instr(substr(removed_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE subscription_credits SET
    updated_at = CASE WHEN updated_at IS NULL THEN NULL ELSE substr(updated_at, 1, 19) || '.' || substr(CASE WHEN substr(updated_at, 20, 1) = '.' THEN substr(updated_at, 21, instr(substr(updated_at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;
UPDATE payer_audit SET
    at = CASE WHEN at IS NULL THEN NULL ELSE substr(at, 1, 19) || '.' || substr(CASE WHEN substr(at, 20, 1) = '.' THEN substr(at, 21, instr(substr(at, 21), '+') - 1) ELSE '' END || '000000', 1, 6) || '+00:00' END;

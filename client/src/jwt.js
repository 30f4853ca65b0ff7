// Reading a JWT's claims without verifying it: the client only needs `exp` to schedule a
// refresh and `sub` to name the user. Verification is the server's job.

/**
 * The payload of a JWT, or null when it is not one.
 * @param {string} token
 * @returns {{exp?: number, sub?: string, [claim: string]: unknown} | null}
 */
export function jwtClaims(token) {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/**
 * When to refresh a token that expires at `exp` (seconds since the epoch): `margin` ms before,
 * but not before `now`. Null when the token has no `exp`.
 * @param {number | undefined} exp
 * @param {number} now  ms since the epoch
 * @param {number} margin  ms
 * @returns {number | null}  ms since the epoch
 */
export function refreshTime(exp, now, margin) {
  if (typeof exp !== "number" || !Number.isFinite(exp)) return null;
  return Math.max(now, exp * 1000 - margin);
}

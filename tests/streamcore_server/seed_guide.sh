# The seed's "Testing Guide": log in, then create an expense (as written, on port 4000).
set -euo pipefail

# Get auth token
TOKEN=$(curl -s -X POST "http://localhost:4000/auth/login" \
  -H "Content-Type: application/json" \
  -d '{"email":"user@example.com","password":"changeme"}' \
  | jq -r '.accessToken')

# Generate idempotency key
IDEMPOTENCY_KEY=$(uuidgen 2>/dev/null || cat /proc/sys/kernel/random/uuid)

# First request - should create
curl -sf -X POST "http://localhost:4000/v1/finance/expenses" \
  -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" \
  -H "Idempotency-Key: $IDEMPOTENCY_KEY" \
  -d '{
    "propertyId": 1,
    "category": "maintenance",
    "amountCents": 50000,
    "currency": "INR",
    "description": "Test expense",
    "expenseDate": "2025-12-13T10:00:00Z",
    "paymentMode": "cash"
  }'

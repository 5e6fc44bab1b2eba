#!/usr/bin/env sh
# Billing over gRPC with grpcurl (reflection: no .proto needed). Health and reflection are open;
# every BillingService call needs a bearer token with billing.read / billing.write.
set -eu
TOKEN=$(curl -s http://localhost:8080/realms/patient-management/protocol/openid-connect/token \
  -d grant_type=client_credentials -d client_id=ms-api -d client_secret=ms-api-dev-secret \
  | sed -E 's/.*"access_token":"([^"]+)".*/\1/')

grpcurl -plaintext localhost:9001 list
grpcurl -plaintext localhost:9001 grpc.health.v1.Health/Check
grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
  -d '{"patientId":"123e4567-e89b-12d3-a456-426614174000","name":"John Doe","email":"john.doe@example.com"}' \
  localhost:9001 BillingService/CreateBillingAccount
grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
  -d '{"patientId":"123e4567-e89b-12d3-a456-426614174000"}' localhost:9001 BillingService/GetBillingAccount
# Without a token: Code: Unauthenticated
grpcurl -plaintext -d '{"patientId":"123e4567-e89b-12d3-a456-426614174000"}' localhost:9001 BillingService/GetBillingAccount || true

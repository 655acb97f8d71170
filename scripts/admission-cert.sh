#!/usr/bin/env bash
# Makes the serving certificate of the gateway and the admission webhook
# (a private CA and a certificate for kubernaut.kubernaut-system.svc),
# stores it in the Secret kubernaut-tls and puts the CA into the webhook
# registration (deploy/base/admission.yaml). Senders of signals (Alertmanager)
# trust the CA printed at the end. Idempotent: an existing Secret is kept
# unless --renew is given. Needs openssl and kubectl with admin rights.
set -euo pipefail
NS=kubernaut-system
SVC=kubernaut
SECRET=kubernaut-tls
HOOK=kubernaut-remediationrequests
CACHE="${HOME}/.cache/kubernaut/admission-cert"
mkdir -p "$CACHE"
cd "$CACHE"

if kubectl -n "$NS" get secret "$SECRET" >/dev/null 2>&1 && [ "${1:-}" != "--renew" ]; then
  echo "admission-cert: Secret $NS/$SECRET exists (--renew to replace it)"
else
  echo "admission-cert: making a CA and a certificate for $SVC.$NS.svc"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kubernaut-admission-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$SVC.$NS.svc" \
    -keyout tls.key -out tls.csr 2>/dev/null
  printf 'subjectAltName=DNS:%s,DNS:%s.%s,DNS:%s.%s.svc\n' "$SVC" "$SVC" "$NS" "$SVC" "$NS" > san.cnf
  openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile san.cnf -out tls.crt 2>/dev/null
  kubectl -n "$NS" create secret tls "$SECRET" --cert=tls.crt --key=tls.key \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  echo "admission-cert: Secret $NS/$SECRET written"
fi

[ -f ca.crt ] || { echo "admission-cert: the CA of the existing Secret is not in $CACHE; run with --renew" >&2; exit 1; }
kubectl patch validatingwebhookconfiguration "$HOOK" --type=json \
  -p "[{\"op\": \"replace\", \"path\": \"/webhooks/0/clientConfig/caBundle\", \"value\": \"$(base64 -w0 < ca.crt)\"}]" >/dev/null
echo "admission-cert: the webhook $HOOK trusts the CA; senders trust $CACHE/ca.crt"

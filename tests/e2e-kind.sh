#!/usr/bin/env bash
# End to end on a real cluster: kind, the real image, the manifests, a Milvus 2.3.5 standalone,
# PostgreSQL as the catalog, and a collection over a PVC of the sample photos, searched from a
# pod through the search Service.
#
# NOT run by `make test` or CI: it needs a Docker engine, kind and network access to pull
# images, none of which the project's CI machine has. Run it by hand where they exist:
#
#   make setup            # the sample photos in data/sample/photos
#   tests/e2e-kind.sh     # about 10 minutes on a laptop; KEEP=1 leaves the cluster running
#
# Needs: docker, kind (0.20+), kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=imgsearch-e2e
image=imgsearch:e2e
ns=imgsearch-demo
say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'e2e-kind: %s\n' "$*" >&2; exit 1; }
for tool in docker kind kubectl; do command -v "$tool" >/dev/null || die "$tool not found"; done
[ -d data/sample/photos ] || die "data/sample/photos missing: run make setup"

cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then say "KEEP=1: cluster $cluster left running"; else kind delete cluster --name "$cluster" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

say "building $image"
docker build -t "$image" .
say "creating kind cluster $cluster"
# A pinned node image: a Kubernetes version the CRD's CEL rules (ratcheting, messageExpression)
# are written for. Override with KIND_NODE_IMAGE to try another.
kind create cluster --name "$cluster" --image "${KIND_NODE_IMAGE:-kindest/node:v1.33.1}" --wait 120s
kind load docker-image "$image" --name "$cluster"

say "installing imgsearch (manifests/overlays/kind: manifests/ with the local image)"
kubectl apply -k manifests/overlays/kind
kubectl -n imgsearch-system rollout status deployment/imgsearch-controller --timeout=180s

say "Milvus 2.3.5 standalone (embedded etcd, local storage) and PostgreSQL in $ns"
kubectl create namespace "$ns"
kubectl -n "$ns" apply -f - <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata: { name: milvus-etcd }
data:
  embedEtcd.yaml: |
    listen-client-urls: http://0.0.0.0:2379
    advertise-client-urls: http://0.0.0.0:2379
    quota-backend-bytes: 4294967296
    auto-compaction-mode: revision
    auto-compaction-retention: '1000'
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: milvus }
spec:
  selector: { matchLabels: { app: milvus } }
  template:
    metadata: { labels: { app: milvus } }
    spec:
      containers:
        - name: milvus
          image: milvusdb/milvus:v2.3.5
          command: ["milvus", "run", "standalone"]
          env:
            - { name: ETCD_USE_EMBED, value: "true" }
            - { name: ETCD_DATA_DIR, value: /var/lib/milvus/etcd }
            - { name: ETCD_CONFIG_PATH, value: /milvus/configs/embedEtcd.yaml }
            - { name: COMMON_STORAGETYPE, value: local }
          ports: [{ containerPort: 19530 }]
          readinessProbe: { httpGet: { path: /healthz, port: 9091 }, periodSeconds: 5 }
          volumeMounts: [{ name: etcd, mountPath: /milvus/configs/embedEtcd.yaml, subPath: embedEtcd.yaml }]
      volumes: [{ name: etcd, configMap: { name: milvus-etcd } }]
---
apiVersion: v1
kind: Service
metadata: { name: milvus }
spec: { selector: { app: milvus }, ports: [{ port: 19530 }] }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: postgres }
spec:
  selector: { matchLabels: { app: postgres } }
  template:
    metadata: { labels: { app: postgres } }
    spec:
      containers:
        - name: postgres
          image: postgres:16-alpine
          env: [{ name: POSTGRES_PASSWORD, value: e2e }, { name: POSTGRES_DB, value: imgsearch }]
          ports: [{ containerPort: 5432 }]
          readinessProbe: { exec: { command: [pg_isready, -U, postgres] }, periodSeconds: 3 }
---
apiVersion: v1
kind: Service
metadata: { name: postgres }
spec: { selector: { app: postgres }, ports: [{ port: 5432 }] }
---
apiVersion: v1
kind: Secret
metadata: { name: imgsearch-catalog }
stringData: { DATABASE_URL: "postgres://postgres:e2e@postgres.imgsearch-demo.svc:5432/imgsearch" }  # the controller (another namespace) purges rows on delete
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: { name: photos }
spec: { accessModes: [ReadWriteOnce], resources: { requests: { storage: 1Gi } } }
---
apiVersion: v1
kind: Pod
metadata: { name: loader }
spec:
  containers: [{ name: loader, image: busybox:1.36, command: [sleep, "3600"], volumeMounts: [{ name: photos, mountPath: /photos }] }]
  volumes: [{ name: photos, persistentVolumeClaim: { claimName: photos } }]
EOF
kubectl -n "$ns" rollout status deployment/milvus --timeout=300s
kubectl -n "$ns" rollout status deployment/postgres --timeout=180s
kubectl -n "$ns" wait --for=condition=Ready pod/loader --timeout=120s
kubectl -n "$ns" exec loader -- mkdir -p /photos/catalogue
for photo in data/sample/photos/*.jpg; do kubectl -n "$ns" cp "$photo" "loader:/photos/catalogue/$(basename "$photo")"; done
count=$(ls data/sample/photos/*.jpg | wc -l)
kubectl -n "$ns" delete pod loader --wait=true  # RWO: let the ingest pod mount it

say "creating the ImageCollection"
kubectl -n "$ns" apply -f - <<EOF
apiVersion: imgsearch.io/v1alpha1
kind: ImageCollection
metadata: { name: photos }
spec:
  milvus: { uri: "http://milvus.$ns.svc:19530" }
  source: { pvc: { claimName: photos, path: /catalogue } }
  catalog: { secretRef: { name: imgsearch-catalog } }
  deletionPolicy: Delete
EOF
# Ready says the search pods answer; it does not wait for the ingest. Wait for what the checks
# below need: the ingest finished and every photo counted.
kubectl -n "$ns" wait --for=condition=Ingested imagecollection/photos --timeout=600s
kubectl -n "$ns" wait --for=jsonpath='{.status.images.indexed}'="$count" imagecollection/photos --timeout=120s \
  || die "indexed $(kubectl -n "$ns" get imgc photos -o jsonpath='{.status.images.indexed}') of $count photos"
kubectl -n "$ns" wait --for=condition=Ready imagecollection/photos --timeout=300s
kubectl -n "$ns" get imgc photos -o wide

say "searching from inside the cluster through the Service"
kubectl -n "$ns" run curl --image=curlimages/curl:8.10.1 --restart=Never --command -- sleep 600
kubectl -n "$ns" wait --for=condition=Ready pod/curl --timeout=120s
kubectl -n "$ns" cp data/sample/photos/rocket.jpg curl:/tmp/rocket.jpg
answer=$(kubectl -n "$ns" exec curl -- curl -sf -F image=@/tmp/rocket.jpg -F top_k=3 "http://photos-search.$ns.svc:8080/v1/search")
echo "$answer"
echo "$answer" | grep -o '"uri":"[^"]*"' | head -1 | grep -q '/catalogue/rocket.jpg"$' || die "rocket.jpg is not the top result for its own image"

say "deleting the collection (deletionPolicy Delete) and uninstalling"
kubectl -n "$ns" delete imagecollection photos --timeout=180s
kubectl delete -k manifests/overlays/kind --timeout=180s
say "e2e on kind passed"

# shellcheck shell=bash
# NCCL and torch.distributed settings for multi-node training, sourced by train_multinode.sbatch.
# A value already in the environment (set by the cluster's modules, or `NCCL_SOCKET_IFNAME=ib0 sbatch ...`)
# is kept. When a job hangs at start-up, run it once with NCCL_DEBUG=INFO: NCCL then prints the
# interface, the transport (InfiniBand or sockets) and the adapters it chose on every node.

# What NCCL prints. WARN: errors and fallbacks (such as InfiniBand found unusable and sockets used
# instead, a silent 10-100x slowdown otherwise) without a line per collective; INFO: also its choices at start-up.
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"

# A collective that times out or a peer that dies aborts the process group and ends the process, so
# SLURM ends the job (and its time is not spent hanging in an all-reduce that never completes).
# TORCH_NCCL_ASYNC_ERROR_HANDLING is torch >= 2.2's name; NCCL_ASYNC_ERROR_HANDLING the name before it.
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export NCCL_ASYNC_ERROR_HANDLING="${NCCL_ASYNC_ERROR_HANDLING:-1}"

# Cluster-specific; set them (here or in the environment) when NCCL_DEBUG=INFO shows a wrong choice:
#
# NCCL_SOCKET_IFNAME: the network interface for NCCL's bootstrap and its socket transport, by name
#   prefix (ib0, ens, eth) or with ^ to exclude (^lo,docker). By default NCCL may take a container bridge
#   or a management network the other nodes cannot reach, and the first collective hangs.
# GLOO_SOCKET_IFNAME: the same for gloo, which carries the training's object collectives (run folder,
#   episode statistics, checkpoint parts); an exact interface name, gloo knows no ^.
# NCCL_IB_DISABLE=1: no InfiniBand (or RoCE) verbs, TCP sockets only; for nodes whose IB is absent or
#   broken, where NCCL would otherwise fail at start-up. Leave it unset (0) where IB works: it is much faster.
# NCCL_IB_HCA: which InfiniBand adapters (and ports) NCCL uses, e.g. mlx5_0,mlx5_1 or =mlx5_0:1 (exact
#   match); on nodes with a storage or management HCA beside the compute fabric's.
for name in NCCL_SOCKET_IFNAME GLOO_SOCKET_IFNAME NCCL_IB_DISABLE NCCL_IB_HCA; do
    if [[ -n "${!name:-}" ]]; then
        export "${name?}"
    fi
done

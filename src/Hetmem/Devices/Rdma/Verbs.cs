namespace Hetmem.Devices.Rdma;

// The value types of the verbs interface. Member names are the ibverbs names without their IBV_ prefix (as Errno keeps
// the kernel's E-names), and numeric values are those of rdma-core's <infiniband/verbs.h>, so a trace or a test can be
// read side by side with a C program.
#pragma warning disable CA1707 // identifiers keep the ibverbs spelling (LOCAL_WRITE, REM_ACCESS_ERR, ...)

/// <summary>Memory-region access rights (kernel/rdma-core: enum ibv_access_flags, IB_ACCESS_*).</summary>
[Flags]
public enum AccessFlags
{
    /// <summary>Local read only.</summary>
    None = 0,
    /// <summary>The local NIC may write the region (scatter of RECV and READ responses). Required by REMOTE_WRITE and REMOTE_ATOMIC (IBV_ACCESS_LOCAL_WRITE).</summary>
    LOCAL_WRITE = 1,
    /// <summary>Remote RDMA WRITE and ATOMIC_WRITE (IBV_ACCESS_REMOTE_WRITE).</summary>
    REMOTE_WRITE = 2,
    /// <summary>Remote RDMA READ (IBV_ACCESS_REMOTE_READ).</summary>
    REMOTE_READ = 4,
    /// <summary>Remote compare-and-swap and fetch-and-add (IBV_ACCESS_REMOTE_ATOMIC).</summary>
    REMOTE_ATOMIC = 8,
    /// <summary>On-demand paging: no pins, translations filled by faults and zapped by MMU notifiers (IBV_ACCESS_ON_DEMAND).</summary>
    ON_DEMAND = 64,
    /// <summary>The region is backed by huge pages; a fault seeing a smaller page fails (IBV_ACCESS_HUGETLB).</summary>
    HUGETLB = 128,
    /// <summary>Remote FLUSH with global-visibility placement (IBV_ACCESS_FLUSH_GLOBAL).</summary>
    FLUSH_GLOBAL = 256,
    /// <summary>Remote FLUSH with persistence placement (IBV_ACCESS_FLUSH_PERSISTENT).</summary>
    FLUSH_PERSISTENT = 512,
}

/// <summary>The kind of a memory region (how its translations are kept).</summary>
public enum MrKind
{
    /// <summary>Classic registration: every page is pinned with get_user_pages(FOLL_LONGTERM) for the region's life.</summary>
    Pinned,
    /// <summary>Explicit on-demand-paging region over [addr, addr + length) (kernel: ib_umem_odp, rxe_odp.c).</summary>
    Odp,
    /// <summary>Implicit ODP: the whole address space, served by 1 GiB children created on fault (kernel: mlx5 implicit MR).</summary>
    ImplicitOdp,
}

/// <summary>Send-queue work-request opcodes (rdma-core: enum ibv_wr_opcode).</summary>
public enum WrOpcode
{
    /// <summary>One-sided write into the remote region (IBV_WR_RDMA_WRITE).</summary>
    RDMA_WRITE = 0,
    /// <summary>Write plus a 32-bit immediate that consumes a remote RECV (IBV_WR_RDMA_WRITE_WITH_IMM).</summary>
    RDMA_WRITE_WITH_IMM = 1,
    /// <summary>Two-sided send into the next posted RECV (IBV_WR_SEND).</summary>
    SEND = 2,
    /// <summary>Send carrying a 32-bit immediate (IBV_WR_SEND_WITH_IMM).</summary>
    SEND_WITH_IMM = 3,
    /// <summary>One-sided read from the remote region (IBV_WR_RDMA_READ).</summary>
    RDMA_READ = 4,
    /// <summary>64-bit compare-and-swap; the original value lands in the local SGE (IBV_WR_ATOMIC_CMP_AND_SWP).</summary>
    ATOMIC_CMP_AND_SWP = 5,
    /// <summary>64-bit fetch-and-add; the original value lands in the local SGE (IBV_WR_ATOMIC_FETCH_AND_ADD).</summary>
    ATOMIC_FETCH_AND_ADD = 6,
    /// <summary>Make earlier writes to a remote range globally visible or persistent (IBV_WR_FLUSH).</summary>
    FLUSH = 14,
    /// <summary>Atomic 64-bit store of the 8 bytes of the local SGE (IBV_WR_ATOMIC_WRITE).</summary>
    ATOMIC_WRITE = 15,
}

/// <summary>Work-request flags (rdma-core: enum ibv_send_flags).</summary>
[Flags]
public enum SendFlags
{
    /// <summary>No flag: the WR completes silently when it succeeds (unless the QP signals all).</summary>
    None = 0,
    /// <summary>Wait for earlier READs and atomics before starting (IBV_SEND_FENCE). Hetmem executes in order, so it always holds.</summary>
    FENCE = 1,
    /// <summary>Generate a work completion on success (IBV_SEND_SIGNALED).</summary>
    SIGNALED = 2,
    /// <summary>Solicited event at the receiver (IBV_SEND_SOLICITED); recorded, no effect.</summary>
    SOLICITED = 4,
}

/// <summary>Work-completion opcodes (rdma-core: enum ibv_wc_opcode).</summary>
public enum WcOpcode
{
    /// <summary>A SEND completed (IBV_WC_SEND).</summary>
    SEND = 0,
    /// <summary>An RDMA WRITE completed (IBV_WC_RDMA_WRITE).</summary>
    RDMA_WRITE = 1,
    /// <summary>An RDMA READ completed (IBV_WC_RDMA_READ).</summary>
    RDMA_READ = 2,
    /// <summary>A compare-and-swap completed (IBV_WC_COMP_SWAP).</summary>
    COMP_SWAP = 3,
    /// <summary>A fetch-and-add completed (IBV_WC_FETCH_ADD).</summary>
    FETCH_ADD = 4,
    /// <summary>A FLUSH completed (IBV_WC_FLUSH).</summary>
    FLUSH = 8,
    /// <summary>An ATOMIC_WRITE completed (IBV_WC_ATOMIC_WRITE).</summary>
    ATOMIC_WRITE = 9,
    /// <summary>A receive WR consumed by a SEND (IBV_WC_RECV).</summary>
    RECV = 128,
    /// <summary>A receive WR consumed by an RDMA WRITE with immediate (IBV_WC_RECV_RDMA_WITH_IMM).</summary>
    RECV_RDMA_WITH_IMM = 129,
}

/// <summary>Work-completion status (rdma-core: enum ibv_wc_status; same values).</summary>
public enum WcStatus
{
    /// <summary>The WR completed (IBV_WC_SUCCESS).</summary>
    SUCCESS = 0,
    /// <summary>A local length error: a message does not fit the posted buffers (IBV_WC_LOC_LEN_ERR).</summary>
    LOC_LEN_ERR = 1,
    /// <summary>A local QP operation error: the WR is inconsistent with the QP (IBV_WC_LOC_QP_OP_ERR).</summary>
    LOC_QP_OP_ERR = 2,
    /// <summary>A local protection error: bad lkey, out of bounds, wrong PD, missing LOCAL_WRITE, or a local ODP fault failed (IBV_WC_LOC_PROT_ERR).</summary>
    LOC_PROT_ERR = 4,
    /// <summary>The WR was flushed because the QP is in the error state (IBV_WC_WR_FLUSH_ERR).</summary>
    WR_FLUSH_ERR = 5,
    /// <summary>The responder's answer made no sense (IBV_WC_BAD_RESP_ERR).</summary>
    BAD_RESP_ERR = 7,
    /// <summary>A local access error on the responder side of a RECV (IBV_WC_LOC_ACCESS_ERR).</summary>
    LOC_ACCESS_ERR = 8,
    /// <summary>The responder rejected the request as invalid: malformed frame, unknown opcode, misaligned atomic, too long (IBV_WC_REM_INV_REQ_ERR).</summary>
    REM_INV_REQ_ERR = 9,
    /// <summary>The responder refused access: unknown rkey, out of bounds, missing permission, failed ODP fault (IBV_WC_REM_ACCESS_ERR).</summary>
    REM_ACCESS_ERR = 10,
    /// <summary>The responder could not complete the operation (its RECV buffer was bad) (IBV_WC_REM_OP_ERR).</summary>
    REM_OP_ERR = 11,
    /// <summary>Transport retries exhausted: no answer within timeout × (retry_cnt + 1) (IBV_WC_RETRY_EXC_ERR).</summary>
    RETRY_EXC_ERR = 12,
    /// <summary>Receiver-not-ready retries exhausted (no RECV posted, or an ODP fault took too long) (IBV_WC_RNR_RETRY_EXC_ERR).</summary>
    RNR_RETRY_EXC_ERR = 13,
    /// <summary>Fatal error (IBV_WC_FATAL_ERR).</summary>
    FATAL_ERR = 19,
    /// <summary>General error (IBV_WC_GENERAL_ERR).</summary>
    GENERAL_ERR = 21,
}

/// <summary>Work-completion flags (rdma-core: enum ibv_wc_flags).</summary>
[Flags]
public enum WcFlags
{
    /// <summary>No flag.</summary>
    None = 0,
    /// <summary><see cref="WorkCompletion.ImmData"/> is valid (IBV_WC_WITH_IMM).</summary>
    WITH_IMM = 2,
}

/// <summary>Queue-pair states (rdma-core: enum ibv_qp_state).</summary>
public enum QpState
{
    /// <summary>Just created (IBV_QPS_RESET).</summary>
    RESET = 0,
    /// <summary>Receive WRs may be posted; waiting for a connection (IBV_QPS_INIT).</summary>
    INIT = 1,
    /// <summary>Ready to receive (IBV_QPS_RTR).</summary>
    RTR = 2,
    /// <summary>Ready to send: connected (IBV_QPS_RTS).</summary>
    RTS = 3,
    /// <summary>Error: every posted and outstanding WR completes with WR_FLUSH_ERR (IBV_QPS_ERR).</summary>
    ERR = 6,
}

/// <summary>Advice of <see cref="ProtectionDomain.AdviseMr"/> (rdma-core: enum ibv_advise_mr_advice).</summary>
public enum AdviseMrAdvice
{
    /// <summary>Fault the range in read-only (IBV_ADVISE_MR_ADVICE_PREFETCH).</summary>
    PREFETCH = 0,
    /// <summary>Fault the range in writable (IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE).</summary>
    PREFETCH_WRITE = 1,
    /// <summary>Make pages already present on the CPU present to the NIC, without faulting (IBV_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT).</summary>
    PREFETCH_NO_FAULT = 2,
}

/// <summary>Flags of <see cref="ProtectionDomain.AdviseMr"/> (rdma-core: IBV_ADVISE_MR_FLAG_*).</summary>
[Flags]
public enum AdviseMrFlags
{
    /// <summary>Best effort: queued to the device's page-fault worker; errors are dropped.</summary>
    None = 0,
    /// <summary>Run synchronously and report errors (IBV_ADVISE_MR_FLAG_FLUSH).</summary>
    FLUSH = 1,
}

/// <summary>Placement type of an RDMA FLUSH (rdma-core: IBV_FLUSH_GLOBAL / IBV_FLUSH_PERSISTENT).</summary>
public enum FlushType
{
    /// <summary>Make the range globally visible (IBV_FLUSH_GLOBAL); needs FLUSH_GLOBAL on the target region.</summary>
    GLOBAL = 1,
    /// <summary>Make the range persistent (IBV_FLUSH_PERSISTENT); needs FLUSH_PERSISTENT. DAX frames are written back to their namespace.</summary>
    PERSISTENT = 2,
}

/// <summary>Selectivity of an RDMA FLUSH (rdma-core: IBV_FLUSH_RANGE / IBV_FLUSH_MR).</summary>
public enum FlushLevel
{
    /// <summary>Only [remote_addr, +length) (IBV_FLUSH_RANGE).</summary>
    RANGE = 0,
    /// <summary>The whole region named by the rkey (IBV_FLUSH_MR).</summary>
    MR = 1,
}

#pragma warning restore CA1707

/// <summary>A scatter/gather element: <see cref="Length"/> bytes at <see cref="Addr"/> of the local region <see cref="Lkey"/> (rdma-core: struct ibv_sge).</summary>
/// <param name="Addr">Virtual address in the process.</param>
/// <param name="Length">Bytes.</param>
/// <param name="Lkey">Local key of a region of the QP's protection domain.</param>
public readonly record struct Sge(ulong Addr, uint Length, uint Lkey);

/// <summary>A send-queue work request (rdma-core: struct ibv_send_wr). Fields not used by the opcode are ignored.</summary>
public struct SendWr
{
    /// <summary>Returned in the completion (wr_id).</summary>
    public ulong WrId;
    /// <summary>The operation (opcode).</summary>
    public WrOpcode Opcode;
    /// <summary>send_flags.</summary>
    public SendFlags SendFlags;
    /// <summary>Local buffers (sg_list): gathered for SEND/WRITE, scattered for READ, 8 bytes for atomics (the original value) and ATOMIC_WRITE (the value). Copied at post time.</summary>
    public Sge[]? SgList;
    /// <summary>Target address in the remote region (wr.rdma.remote_addr / wr.atomic.remote_addr).</summary>
    public ulong RemoteAddr;
    /// <summary>Remote key (wr.rdma.rkey / wr.atomic.rkey).</summary>
    public uint Rkey;
    /// <summary>Compare value of CMP_AND_SWP, addend of FETCH_AND_ADD (wr.atomic.compare_add).</summary>
    public ulong CompareAdd;
    /// <summary>Swap value of CMP_AND_SWP (wr.atomic.swap).</summary>
    public ulong Swap;
    /// <summary>Immediate data of *_WITH_IMM (imm_data).</summary>
    public uint ImmData;
    /// <summary>Bytes to flush from <see cref="RemoteAddr"/> (ibv_wr_flush len).</summary>
    public ulong FlushLength;
    /// <summary>Placement type of a FLUSH.</summary>
    public FlushType FlushType;
    /// <summary>Selectivity of a FLUSH.</summary>
    public FlushLevel FlushLevel;
}

/// <summary>A receive-queue work request (rdma-core: struct ibv_recv_wr).</summary>
public struct RecvWr
{
    /// <summary>Returned in the completion.</summary>
    public ulong WrId;
    /// <summary>Where an incoming SEND is scattered (needs LOCAL_WRITE). Copied at post time.</summary>
    public Sge[]? SgList;
}

/// <summary>A work completion (rdma-core: struct ibv_wc).</summary>
public struct WorkCompletion
{
    /// <summary>The WR's id.</summary>
    public ulong WrId;
    /// <summary>Outcome.</summary>
    public WcStatus Status;
    /// <summary>What completed (valid for SUCCESS; set for errors too).</summary>
    public WcOpcode Opcode;
    /// <summary>Extra error detail: the errno of a failed ODP fault, or 0.</summary>
    public uint VendorErr;
    /// <summary>Bytes received (RECV, RDMA_READ).</summary>
    public uint ByteLen;
    /// <summary>Immediate data when <see cref="WcFlags"/> has WITH_IMM.</summary>
    public uint ImmData;
    /// <summary>The local QP number.</summary>
    public uint QpNum;
    /// <summary>The remote QP number (RECV completions).</summary>
    public uint SrcQp;
    /// <summary>wc_flags.</summary>
    public WcFlags WcFlags;

    /// <inheritdoc/>
    public override readonly string ToString() => $"wc(wr_id={WrId}, {Status}, {Opcode}, len={ByteLen}, qp={QpNum}{(VendorErr != 0 ? $", vendor_err={VendorErr}" : "")})";
}

/// <summary>Queue sizes (rdma-core: struct ibv_qp_cap).</summary>
/// <param name="MaxSendWr">Outstanding send WRs (1..<see cref="DeviceAttr.MaxQpWr"/>).</param>
/// <param name="MaxRecvWr">Posted receive WRs.</param>
/// <param name="MaxSendSge">SGEs per send WR.</param>
/// <param name="MaxRecvSge">SGEs per receive WR.</param>
public readonly record struct QpCap(int MaxSendWr, int MaxRecvWr, int MaxSendSge, int MaxRecvSge)
{
    /// <summary>128 send and receive WRs of 4 SGEs each (used when <see cref="QpInitAttr.Cap"/> is left default).</summary>
    public static QpCap Default => new(128, 128, 4, 4);
}

/// <summary>QP creation attributes (rdma-core: struct ibv_qp_init_attr, RC only).</summary>
/// <param name="SendCq">Completions of send WRs.</param>
/// <param name="RecvCq">Completions of receive WRs.</param>
/// <param name="Cap">Queue sizes; <c>default</c> means <see cref="QpCap.Default"/>.</param>
/// <param name="SqSigAll">Every send WR generates a completion (sq_sig_all).</param>
public sealed record QpInitAttr(CompletionQueue SendCq, CompletionQueue RecvCq, QpCap Cap = default, bool SqSigAll = false);

/// <summary>
/// Connection attributes given to <see cref="QueuePair.Connect"/> (rdma-core: the RTR/RTS fields of struct ibv_qp_attr,
/// in readable units instead of the encoded exponents).
/// </summary>
public sealed record QpAttr
{
    /// <summary>Local ACK timeout: how long the requester waits for any progress before a retry (timeout; IB encodes 4.096 µs × 2^n).</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>Transport retries before RETRY_EXC_ERR (retry_cnt, 0..7).</summary>
    public int RetryCnt { get; init; } = 7;
    /// <summary>Receiver-not-ready retries the responder may spend on this requester's behalf (rnr_retry, 0..7; 7 = infinite).</summary>
    public int RnrRetry { get; init; } = 7;
    /// <summary>First RNR back-off step of this QP as a responder (min_rnr_timer); each further step doubles, up to 64 ms.</summary>
    public TimeSpan MinRnrTimer { get; init; } = TimeSpan.FromMilliseconds(1);
}

/// <summary>On-demand-paging capabilities (rdma-core: struct ibv_odp_caps).</summary>
/// <param name="GeneralCaps">IBV_ODP_SUPPORT (1) | IBV_ODP_SUPPORT_IMPLICIT (2).</param>
/// <param name="RcOdpCaps">Per-operation support for RC: IBV_ODP_SUPPORT_SEND (1), RECV (2), WRITE (4), READ (8), ATOMIC (16), SRQ_RECV (32), FLUSH (64), ATOMIC_WRITE (128).</param>
public readonly record struct OdpCaps(uint GeneralCaps, uint RcOdpCaps);

/// <summary>Device attributes (rdma-core: struct ibv_device_attr_ex, the fields Hetmem models).</summary>
/// <param name="MaxMrSize">Largest region (max_mr_size).</param>
/// <param name="MaxQpWr">Largest send or receive queue (max_qp_wr).</param>
/// <param name="MaxSge">Most SGEs per WR (max_sge).</param>
/// <param name="MaxCqe">Largest completion queue (max_cqe).</param>
/// <param name="MaxMsgSize">Largest message (port attribute max_msg_sz).</param>
/// <param name="OdpCaps">ODP support (odp_caps).</param>
public readonly record struct DeviceAttr(ulong MaxMrSize, int MaxQpWr, int MaxSge, int MaxCqe, uint MaxMsgSize, OdpCaps OdpCaps);

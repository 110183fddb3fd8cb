using System.Buffers.Binary;
using System.Numerics;

namespace Hetmem.Devices.Rdma;

#pragma warning disable CA1707 // opcode and syndrome names keep the InfiniBand spelling

/// <summary>Frame opcodes (InfiniBand RC base-transport-header opcodes where one exists; connection setup is Hetmem's).</summary>
public enum WireOpcode : byte
{
    /// <summary>RC SEND Only.</summary>
    SEND = 0x04,
    /// <summary>RC SEND Only with Immediate.</summary>
    SEND_WITH_IMM = 0x05,
    /// <summary>RC RDMA WRITE Only.</summary>
    RDMA_WRITE = 0x0A,
    /// <summary>RC RDMA WRITE Only with Immediate.</summary>
    RDMA_WRITE_WITH_IMM = 0x0B,
    /// <summary>RC RDMA READ Request.</summary>
    RDMA_READ_REQUEST = 0x0C,
    /// <summary>RC RDMA READ Response Only.</summary>
    RDMA_READ_RESPONSE = 0x10,
    /// <summary>RC Acknowledge (the syndrome says ACK, RNR or which NAK).</summary>
    ACKNOWLEDGE = 0x11,
    /// <summary>RC ATOMIC Acknowledge (carries the original value).</summary>
    ATOMIC_ACKNOWLEDGE = 0x12,
    /// <summary>RC CmpSwap.</summary>
    COMPARE_SWAP = 0x13,
    /// <summary>RC FetchAdd.</summary>
    FETCH_ADD = 0x14,
    /// <summary>RC FLUSH (IBTA 1.5).</summary>
    FLUSH = 0x1C,
    /// <summary>RC ATOMIC WRITE (IBTA 1.5).</summary>
    ATOMIC_WRITE = 0x1D,
    /// <summary>Connection request: Data1 = source QPN | destination QPN &lt;&lt; 32, Data2 = the requester's rnr_retry (the role of the CM REQ).</summary>
    CONNECT_REQUEST = 0xF0,
    /// <summary>Connection reply: syndrome ACK (accepted) or NAK_INVALID_REQUEST (no such QP, or not connectable).</summary>
    CONNECT_REPLY = 0xF1,
}

/// <summary>The AETH syndrome of an acknowledge frame.</summary>
public enum WireSyndrome : byte
{
    /// <summary>Positive acknowledgement.</summary>
    ACK = 0,
    /// <summary>Receiver not ready: the responder is waiting (an ODP fault or a RECV) and will answer later; resets the requester's timer.</summary>
    RNR_WAIT = 1,
    /// <summary>NAK: invalid request (malformed frame, unknown opcode, bad length, misaligned atomic) → REM_INV_REQ_ERR.</summary>
    NAK_INVALID_REQUEST = 2,
    /// <summary>NAK: remote access error (rkey, bounds, permission, failed fault) → REM_ACCESS_ERR.</summary>
    NAK_REMOTE_ACCESS = 3,
    /// <summary>NAK: remote operational error → REM_OP_ERR.</summary>
    NAK_REMOTE_OPERATIONAL = 4,
    /// <summary>NAK: the RNR budget (the requester's rnr_retry) ran out → RNR_RETRY_EXC_ERR.</summary>
    NAK_RNR_RETRY_EXCEEDED = 5,
}

#pragma warning restore CA1707

/// <summary>
/// A frame header. Every frame is this 56-byte header followed by <see cref="PayloadLength"/> bytes. Fields that an
/// opcode does not use are zero.
/// </summary>
public struct WireHeader
{
    /// <summary>The opcode.</summary>
    public WireOpcode Opcode;
    /// <summary>Acknowledge syndrome (responses).</summary>
    public WireSyndrome Syndrome;
    /// <summary>FLUSH: placement type | selectivity level &lt;&lt; 4.</summary>
    public byte Flags;
    /// <summary>Packet sequence number: a request's PSN, echoed by its response.</summary>
    public uint Psn;
    /// <summary>Bytes of payload after the header.</summary>
    public uint PayloadLength;
    /// <summary>Remote virtual address (RETH/AtomicETH).</summary>
    public ulong Va;
    /// <summary>Remote key.</summary>
    public uint Rkey;
    /// <summary>DMA length of an RDMA READ request.</summary>
    public uint Length;
    /// <summary>Compare (CmpSwap), addend (FetchAdd), the original value (ATOMIC ACK), the value (ATOMIC WRITE), the length (FLUSH), QPNs (CONNECT).</summary>
    public ulong Data1;
    /// <summary>Swap (CmpSwap), immediate (WITH_IMM), vendor error (NAK), rnr_retry (CONNECT_REQUEST).</summary>
    public ulong Data2;
}

/// <summary>
/// The Hetmem RDMA transport: framed messages over a TCP stream on the loopback interface, one connection per RC
/// queue-pair pair. Public so that a peer in another process, or a test speaking the protocol by hand, can frame
/// requests without an <see cref="RdmaDevice"/>.
/// </summary>
/// <remarks>
/// Header layout (little-endian): magic u32 "HRDM" · version u8 · opcode u8 · syndrome u8 · flags u8 · psn u32 ·
/// payload length u32 · va u64 · rkey u32 · length u32 · data1 u64 · data2 u64 · CRC32C of bytes 0..47 u32 · zero u32.
/// A header whose magic, version, checksum or length is wrong is malformed: the receiver answers
/// NAK_INVALID_REQUEST and resynchronises by scanning for the next valid header, so the connection survives.
/// </remarks>
public static class RdmaWire
{
    /// <summary>"HRDM" little-endian.</summary>
    public const uint Magic = 0x4D445248;
    /// <summary>Protocol version.</summary>
    public const byte Version = 1;
    /// <summary>Header bytes.</summary>
    public const int HeaderSize = 56;
    /// <summary>Largest payload a receiver accepts (larger is malformed).</summary>
    public const uint MaxPayload = 16u << 20;
    /// <summary>PSN reported in a NAK for a frame whose header could not be parsed.</summary>
    public const uint UnknownPsn = uint.MaxValue;

    /// <summary>Encodes <paramref name="h"/> into the first <see cref="HeaderSize"/> bytes of <paramref name="dst"/>.</summary>
    /// <exception cref="ArgumentException">When <paramref name="dst"/> is shorter than a header.</exception>
    public static void WriteHeader(Span<byte> dst, in WireHeader h)
    {
        if (dst.Length < HeaderSize)
        {
            throw new ArgumentException("buffer shorter than a frame header", nameof(dst));
        }
        BinaryPrimitives.WriteUInt32LittleEndian(dst, Magic);
        dst[4] = Version;
        dst[5] = (byte)h.Opcode;
        dst[6] = (byte)h.Syndrome;
        dst[7] = h.Flags;
        BinaryPrimitives.WriteUInt32LittleEndian(dst[8..], h.Psn);
        BinaryPrimitives.WriteUInt32LittleEndian(dst[12..], h.PayloadLength);
        BinaryPrimitives.WriteUInt64LittleEndian(dst[16..], h.Va);
        BinaryPrimitives.WriteUInt32LittleEndian(dst[24..], h.Rkey);
        BinaryPrimitives.WriteUInt32LittleEndian(dst[28..], h.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(dst[32..], h.Data1);
        BinaryPrimitives.WriteUInt64LittleEndian(dst[40..], h.Data2);
        BinaryPrimitives.WriteUInt32LittleEndian(dst[48..], Checksum(dst));
        BinaryPrimitives.WriteUInt32LittleEndian(dst[52..], 0);
    }

    /// <summary>Decodes a header; false when the magic, version, checksum or payload length is wrong.</summary>
    public static bool TryReadHeader(ReadOnlySpan<byte> src, out WireHeader h)
    {
        h = default;
        if (src.Length < HeaderSize
            || BinaryPrimitives.ReadUInt32LittleEndian(src) != Magic
            || src[4] != Version
            || BinaryPrimitives.ReadUInt32LittleEndian(src[48..]) != Checksum(src))
        {
            return false;
        }
        h.Opcode = (WireOpcode)src[5];
        h.Syndrome = (WireSyndrome)src[6];
        h.Flags = src[7];
        h.Psn = BinaryPrimitives.ReadUInt32LittleEndian(src[8..]);
        h.PayloadLength = BinaryPrimitives.ReadUInt32LittleEndian(src[12..]);
        h.Va = BinaryPrimitives.ReadUInt64LittleEndian(src[16..]);
        h.Rkey = BinaryPrimitives.ReadUInt32LittleEndian(src[24..]);
        h.Length = BinaryPrimitives.ReadUInt32LittleEndian(src[28..]);
        h.Data1 = BinaryPrimitives.ReadUInt64LittleEndian(src[32..]);
        h.Data2 = BinaryPrimitives.ReadUInt64LittleEndian(src[40..]);
        return h.PayloadLength <= MaxPayload;
    }

    /// <summary>The status a requester reports for an acknowledge syndrome.</summary>
    public static WcStatus StatusOf(WireSyndrome syndrome) => syndrome switch
    {
        WireSyndrome.ACK => WcStatus.SUCCESS,
        WireSyndrome.NAK_INVALID_REQUEST => WcStatus.REM_INV_REQ_ERR,
        WireSyndrome.NAK_REMOTE_ACCESS => WcStatus.REM_ACCESS_ERR,
        WireSyndrome.NAK_REMOTE_OPERATIONAL => WcStatus.REM_OP_ERR,
        WireSyndrome.NAK_RNR_RETRY_EXCEEDED => WcStatus.RNR_RETRY_EXC_ERR,
        _ => WcStatus.BAD_RESP_ERR,
    };

    private static uint Checksum(ReadOnlySpan<byte> header)
    {
        uint crc = 0xFFFF_FFFF;
        for (int i = 0; i < 48; i += 8)
        {
            crc = BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt64LittleEndian(header[i..]));
        }
        return ~crc;
    }
}

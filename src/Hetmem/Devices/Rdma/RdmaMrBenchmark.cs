using System.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Rdma;

/// <summary>One row of the pinned-versus-ODP comparison.</summary>
/// <param name="Kind">Pinned or ODP.</param>
/// <param name="Bytes">Region size.</param>
/// <param name="RegistrationMicroseconds">ibv_reg_mr time (pinned: fault and pin every page; ODP: notifier + snapshot).</param>
/// <param name="FirstTouchMicroseconds">Mean latency of a remote 8-byte READ of a page nobody touched since registration.</param>
/// <param name="SteadyReadLatencyMicroseconds">Mean latency of a remote 8-byte READ once translations are present.</param>
/// <param name="SteadyThroughputMiBPerSecond">Remote 1 MiB READs over the whole region, translations present.</param>
public sealed record RdmaMrMeasurement(MrKind Kind, ulong Bytes, double RegistrationMicroseconds, double FirstTouchMicroseconds,
    double SteadyReadLatencyMicroseconds, double SteadyThroughputMiBPerSecond);

/// <summary>
/// Measures what pinned and ODP registration cost over the loopback transport (the table in docs/rdma.md): two devices
/// in one process, the region in an anonymous mapping of the server's address space. Not a benchmark gate: speed is
/// only reported.
/// </summary>
public static class RdmaMrBenchmark
{
    /// <summary>Registers <paramref name="bytes"/> of fresh anonymous memory as <paramref name="kind"/> and measures it.</summary>
    /// <exception cref="MmException">The errno of a setup step (EOPNOTSUPP for pinned registration when get_user_pages is unavailable).</exception>
    public static RdmaMrMeasurement Measure(PhysicalMemory memory, MrKind kind, ulong bytes = 16UL << 20, int firstTouchSamples = 64)
    {
        ArgumentNullException.ThrowIfNull(memory);
        if (kind == MrKind.ImplicitOdp || bytes < 2 * Page.PmdSize || (ulong)firstTouchSamples * Page.Size > bytes)
        {
            MmException.Throw(Errno.EINVAL, $"measure {kind} over {bytes} bytes with {firstTouchSamples} samples");
        }
        var srvMm = new AddressSpace(memory);
        var cliMm = new AddressSpace(memory);
        using var srv = new RdmaDevice("bench_srv");
        using var cli = new RdmaDevice("bench_cli");
        try
        {
            ProtectionDomain spd = srv.AllocPd(srvMm);
            ProtectionDomain cpd = cli.AllocPd(cliMm);
            CompletionQueue scq = srv.CreateCq(16);
            CompletionQueue ccq = cli.CreateCq(16);
            QueuePair sqp = spd.CreateQp(new QpInitAttr(scq, scq));
            QueuePair cqp = cpd.CreateQp(new QpInitAttr(ccq, ccq));
            QueuePair.ConnectPair(cqp, sqp);
            ulong local = cliMm.Mmap(0, 1UL << 20, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
            MemoryRegion lmr = cpd.RegMr(local, 1UL << 20, AccessFlags.LOCAL_WRITE | AccessFlags.ON_DEMAND);
            cpd.AdviseMr(AdviseMrAdvice.PREFETCH_WRITE, AdviseMrFlags.FLUSH, [new Sge(local, 1u << 20, lmr.Lkey)]);

            ulong a = srvMm.Mmap(0, bytes, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
            AccessFlags access = AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_WRITE | (kind == MrKind.Odp ? AccessFlags.ON_DEMAND : 0);
            long t0 = Stopwatch.GetTimestamp();
            MemoryRegion mr = spd.RegMr(a, bytes, access);
            double reg = Stopwatch.GetElapsedTime(t0).TotalMicroseconds;

            ulong stride = Page.AlignDown(bytes / (ulong)firstTouchSamples, Page.Size);
            long t1 = Stopwatch.GetTimestamp();
            for (int i = 0; i < firstTouchSamples; i++)
            {
                Read(cqp, ccq, local, lmr.Lkey, a + (ulong)i * stride, mr.Rkey, 8);
            }
            double first = Stopwatch.GetElapsedTime(t1).TotalMicroseconds / firstTouchSamples;

            for (ulong off = 0; off < bytes; off += 1UL << 20)
            {
                Read(cqp, ccq, local, lmr.Lkey, a + off, mr.Rkey, (uint)Math.Min(1UL << 20, bytes - off));
            }
            long t2 = Stopwatch.GetTimestamp();
            for (int i = 0; i < firstTouchSamples; i++)
            {
                Read(cqp, ccq, local, lmr.Lkey, a + (ulong)i * stride, mr.Rkey, 8);
            }
            double steady = Stopwatch.GetElapsedTime(t2).TotalMicroseconds / firstTouchSamples;

            long t3 = Stopwatch.GetTimestamp();
            ulong moved = 0;
            for (int round = 0; round < 4; round++)
            {
                for (ulong off = 0; off < bytes; off += 1UL << 20)
                {
                    uint n = (uint)Math.Min(1UL << 20, bytes - off);
                    Read(cqp, ccq, local, lmr.Lkey, a + off, mr.Rkey, n);
                    moved += n;
                }
            }
            double mibps = moved / (double)(1 << 20) / Stopwatch.GetElapsedTime(t3).TotalSeconds;
            return new RdmaMrMeasurement(kind, bytes, reg, first, steady, mibps);
        }
        finally
        {
            srv.Dispose();
            cli.Dispose();
            srvMm.Exit();
            cliMm.Exit();
        }
    }

    private static void Read(QueuePair qp, CompletionQueue cq, ulong local, uint lkey, ulong remote, uint rkey, uint length)
    {
        qp.PostSend(new SendWr { Opcode = WrOpcode.RDMA_READ, SendFlags = SendFlags.SIGNALED, SgList = [new Sge(local, length, lkey)], RemoteAddr = remote, Rkey = rkey });
        WorkCompletion wc = cq.Wait(TimeSpan.FromSeconds(30));
        if (wc.Status != WcStatus.SUCCESS)
        {
            MmException.Throw(Errno.EIO, $"benchmark READ of 0x{remote:x} failed: {wc}");
        }
    }
}

using System.Globalization;
using Hetmem.Devices.Rdma;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;
using Xunit.Abstractions;
using static Hetmem.Tests.Devices.Rdma.RdmaTestBed;

namespace Hetmem.Tests.Devices.Rdma;

/// <summary>
/// Remote writes and atomics race the CPU's munmap and mprotect. Invariants: once munmap returned, no remote write
/// lands in the frames it freed (they are handed to victim mappings whose bytes must survive, and the NIC's frame
/// generation check fires on any use of a freed frame); once mprotect(PROT_READ) returned, the bytes stay as the CPU
/// saw them. Prints its seed; HETMEM_SEED reproduces a run.
/// </summary>
public sealed class OdpStressTests(ITestOutputHelper output)
{
    private const int RegionPages = 64;

    [Fact]
    public void RemoteWritesRacingMunmapAndMprotectNeverLandAfterTheInvalidationReturned()
    {
        int seed = Environment.GetEnvironmentVariable("HETMEM_SEED") is { Length: > 0 } s
            ? int.Parse(s, CultureInfo.InvariantCulture)
            : Random.Shared.Next();
        output.WriteLine($"seed {seed} (reproduce with HETMEM_SEED={seed})");
        bool invariants = Invariants.Enabled;
        Invariants.Enabled = true;
        try
        {
            Run(seed);
        }
        finally
        {
            Invariants.Enabled = invariants;
        }
    }

    private void Run(int seed)
    {
        using var bed = new RdmaTestBed();
        AddressSpace mm = bed.ServerMm;
        ulong region = bed.MapServer(RegionPages * Page.Size);
        var mr = (OdpMemoryRegion)bed.ServerPd.RegMr(region, RegionPages * Page.Size,
            AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_ATOMIC | AccessFlags.ON_DEMAND);
        var cpuRng = new Random(seed);
        var nicRng = new Random(seed ^ 0x5A5A5A5A);
        long writes = 0;
        long refused = 0;
        string? unexpected = null;
        using var stop = new CancellationTokenSource();

        // The remote side: a pipelined stream of 64-byte writes and fetch-adds to random places of the region.
        byte[] payload = new byte[64];
        Array.Fill(payload, (byte)0xEE);
        bed.ClientCpu.Write(bed.ClientBuf, payload);
        var writer = new Thread(() =>
        {
            const int window = 16;
            int inFlight = 0;
            ulong id = 0;
            while (!stop.IsCancellationRequested || inFlight > 0)
            {
                while (inFlight < window && !stop.IsCancellationRequested)
                {
                    ulong off = (ulong)nicRng.Next(0, RegionPages * Page.Size / 64) * 64;
                    bool atomic = nicRng.Next(4) == 0;
                    bed.ClientQp.PostSend(new SendWr
                    {
                        WrId = ++id,
                        Opcode = atomic ? WrOpcode.ATOMIC_FETCH_AND_ADD : WrOpcode.RDMA_WRITE,
                        SendFlags = SendFlags.SIGNALED,
                        SgList = [new Sge(bed.ClientBuf + (atomic ? 4096UL : 0), atomic ? 8u : 64u, bed.ClientMr.Lkey)],
                        RemoteAddr = region + off,
                        Rkey = mr.Rkey,
                        CompareAdd = 1,
                    });
                    inFlight++;
                }
                WorkCompletion wc = bed.ClientCq.Wait(WaitTime);
                inFlight--;
                Interlocked.Increment(ref writes);
                if (wc.Status == WcStatus.REM_ACCESS_ERR)
                {
                    Interlocked.Increment(ref refused);
                }
                else if (wc.Status != WcStatus.SUCCESS)
                {
                    unexpected ??= wc.ToString();
                }
            }
        });
        writer.Start();

        // Victims live in an arena of their own, so a re-mapped hole of the region never replaces one.
        const int slots = 32;
        ulong arena = mm.Mmap(0, slots * 8UL * Page.Size, Prot.None, MapFlags.Private | MapFlags.Anonymous | MapFlags.NoReserve);
        var freeSlots = new Queue<int>(Enumerable.Range(0, slots));
        var victims = new List<(ulong Addr, ulong Pages, byte Fill)>();
        using var cpu = new Cpu(mm);
        for (int step = 0; step < 150; step++)
        {
            int first = cpuRng.Next(RegionPages - 8);
            int pages = cpuRng.Next(1, 8);
            ulong at = region + (ulong)first * Page.Size;
            ulong len = (ulong)pages * Page.Size;
            if (cpuRng.Next(2) == 0)
            {
                // munmap, hand the freed frames to a victim at once, then map the hole again.
                mm.Munmap(at, len);
                byte fill = (byte)(1 + step % 250);
                ulong v = mm.Mmap(arena + (ulong)freeSlots.Dequeue() * 8 * Page.Size, len, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
                cpu.Fill(v, len, fill);
                victims.Add((v, (ulong)pages, fill));
                mm.Mmap(at, len, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
            }
            else
            {
                // mprotect read-only: from the moment it returns, the bytes must not change.
                mm.Mprotect(at, len, Prot.Read);
                byte[] before = new byte[len];
                cpu.Read(at, before);
                long seen = Interlocked.Read(ref writes);
                SpinWait.SpinUntil(() => Interlocked.Read(ref writes) > seen + 8, TimeSpan.FromSeconds(5));
                byte[] after = new byte[len];
                cpu.Read(at, after);
                Assert.True(before.AsSpan().SequenceEqual(after), $"seed {seed}: a remote write changed read-only bytes at 0x{at:x} after mprotect returned");
                mm.Mprotect(at, len, Prot.Read | Prot.Write);
            }
            if (victims.Count > 24)
            {
                (ulong va, ulong n, _) = victims[0];
                CheckVictim(cpu, victims[0], seed);
                mm.Mmap(va, n * Page.Size, Prot.None, MapFlags.Private | MapFlags.Anonymous | MapFlags.NoReserve | MapFlags.Fixed);
                freeSlots.Enqueue((int)((va - arena) / (8 * Page.Size)));
                victims.RemoveAt(0);
            }
        }
        stop.Cancel();
        Assert.True(writer.Join(WaitTime), $"seed {seed}: the remote writer hung");
        foreach (var victim in victims)
        {
            CheckVictim(cpu, victim, seed);
        }
        output.WriteLine($"{writes} remote operations, {refused} refused, {mr.Stats}");
        Assert.True(unexpected is null, $"seed {seed}: unexpected completion {unexpected}");
        Assert.True(writes > 150, $"seed {seed}: only {writes} remote operations ran");
        Assert.True(mr.Stats.PageInvalidations > 0, $"seed {seed}: no invalidation reached the NIC");
        bed.AssertHealthy();
    }

    private static void CheckVictim(Cpu cpu, (ulong Addr, ulong Pages, byte Fill) victim, int seed)
    {
        byte[] bytes = new byte[victim.Pages * Page.Size];
        cpu.Read(victim.Addr, bytes);
        int bad = Array.FindIndex(bytes, b => b != victim.Fill);
        Assert.True(bad < 0, $"seed {seed}: byte {bad} of a mapping that received freed frames is 0x{(bad < 0 ? 0 : bytes[bad]):x2}, not 0x{victim.Fill:x2}: a remote write landed after munmap returned");
    }
}

using System.Buffers.Binary;
using System.Diagnostics;
using System.Numerics;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Devices.Rdma;

/// <summary>Parameters of <see cref="RdmaKvWorkload.Run"/>.</summary>
public sealed record RdmaKvOptions
{
    /// <summary>Client connections, each with its own address space and device (another process or host).</summary>
    public int Clients { get; init; } = 4;
    /// <summary>How long the clients and the owner run.</summary>
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>Keys in the store (at most <see cref="RdmaKvWorkload.Buckets"/> / 2).</summary>
    public int Keys { get; init; } = 1024;
    /// <summary>Seed of the owner's and the clients' random choices.</summary>
    public int Seed { get; init; } = 1;
    /// <summary>Where the DAX namespace file is created (and deleted afterwards).</summary>
    public required string DaxDirectory { get; init; }
    /// <summary>Time between two compactions of the owner.</summary>
    public TimeSpan CompactionInterval { get; init; } = TimeSpan.FromMilliseconds(10);
    /// <summary>Time between two value updates of the owner.</summary>
    public TimeSpan UpdateInterval { get; init; } = TimeSpan.FromMilliseconds(0.05);
}

/// <summary>What <see cref="RdmaKvWorkload.Run"/> measured (the JSON keys of <c>hetmem run rdma-kv --json</c> in brackets).</summary>
/// <param name="Verified">Values that passed version and checksum validation (verified).</param>
/// <param name="Ops">Client operations (ops).</param>
/// <param name="StaleReads">Validated values older than one the same client saw before, or from the wrong key: must be 0 (stale_reads).</param>
/// <param name="RemoteErrors">Remote operations that completed with an error status: must be 0 (remote_errors).</param>
/// <param name="OdpFaults">ODP faults serviced for the store's region (odp_faults; mlx5 page_faults_handled).</param>
/// <param name="Invalidations">Invalidations that zapped the region's translations (invalidations; mlx5 page_invalidations_handled).</param>
/// <param name="PinnedDaxRefused">1 when pinned registration of the DAX mapping was refused with EOPNOTSUPP (pinned_dax_refused).</param>
/// <param name="Seconds">Wall time of the measured phase (seconds).</param>
/// <param name="Retries">Reads retried because a value was being written, compacted away, or torn.</param>
/// <param name="LockedReads">Reads done under a bucket lock taken with a remote compare-and-swap.</param>
/// <param name="LocksLost">Client locks a compaction overwrote (their release CAS found another value).</param>
/// <param name="Updates">Values the owner rewrote.</param>
/// <param name="Compactions">Punch-hole-and-rewrite passes of the owner.</param>
/// <param name="OdpFaultPages">Pages faulted in (mlx5 page_faults).</param>
/// <param name="InvalidatedPages">Translations zapped (mlx5 page_invalidations).</param>
public sealed record RdmaKvReport(long Verified, long Ops, long StaleReads, long RemoteErrors, long OdpFaults, long Invalidations,
    long PinnedDaxRefused, double Seconds, long Retries, long LockedReads, long LocksLost, long Updates, long Compactions,
    long OdpFaultPages, long InvalidatedPages)
{
    /// <summary>Client operations per second.</summary>
    public double OpsPerSecond => Seconds > 0 ? Ops / Seconds : 0;

    /// <summary>True when nothing stale was read and no remote operation failed.</summary>
    public bool Passed => StaleReads == 0 && RemoteErrors == 0 && Verified > 0;

    /// <summary>The report as ordered (key, value) pairs with the JSON names.</summary>
    public IReadOnlyList<KeyValuePair<string, double>> ToNamedList() =>
    [
        new("verified", Verified), new("ops", Ops), new("stale_reads", StaleReads), new("remote_errors", RemoteErrors),
        new("odp_faults", OdpFaults), new("invalidations", Invalidations), new("pinned_dax_refused", PinnedDaxRefused),
        new("seconds", Seconds), new("ops_per_second", OpsPerSecond), new("retries", Retries), new("locked_reads", LockedReads),
        new("locks_lost", LocksLost), new("updates", Updates), new("compactions", Compactions),
        new("odp_fault_pages", OdpFaultPages), new("invalidated_pages", InvalidatedPages),
    ];
}

/// <summary>
/// The <c>rdma-kv</c> workload: a hash-table key-value store kept in a file on a DAX file system, mapped shared by its
/// owner and registered as one ODP region; N clients, each another "host" with its own device and address space,
/// serve themselves with one-sided RDMA READs of whole buckets (and remote compare-and-swap on the bucket lock for
/// locked reads), while the owner updates values under the same locks and compacts the file: it punches a hole over a
/// run of buckets and writes them back, which invalidates the NIC's translations of those blocks and hands the
/// blocks back to the file system. Every value carries a version and a CRC32C over key, version and bytes; a
/// validated value older than one already seen would be a stale read — the failure ODP on DAX must never show.
/// </summary>
/// <remarks>
/// Bucket layout (256 bytes): lock u64 (0 free, else holder) · version u64 (odd while written) · key + 1 u64 (0 empty)
/// · length u32 · CRC32C u32 · value (224 bytes). The table of <see cref="Buckets"/> buckets starts at file offset 2 MiB
/// (a PMD boundary); keys are placed by linear probing from a multiplicative hash.
/// </remarks>
public static class RdmaKvWorkload
{
    /// <summary>Buckets in the table.</summary>
    public const int Buckets = 4096;
    /// <summary>Bytes of one bucket.</summary>
    public const int BucketBytes = 256;
    /// <summary>Bytes of a value.</summary>
    public const int ValueBytes = BucketBytes - 32;
    private const ulong TableOffset = 2UL << 20;
    private const ulong FileBytes = 4UL << 20;
    private const ulong OwnerId = 1;
    private const int MaxProbes = 16;

    /// <summary>Runs the workload.</summary>
    /// <exception cref="MmException">The errno of a setup step that failed (namespace, file system, mapping, registration, connection).</exception>
    public static RdmaKvReport Run(PhysicalMemory memory, RdmaKvOptions options, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Keys < 1 || options.Keys > Buckets / 2 || options.Clients < 1)
        {
            MmException.Throw(Errno.EINVAL, $"rdma-kv: {options.Keys} keys (1..{Buckets / 2}) and {options.Clients} clients (≥ 1)");
        }
        string path = Path.Combine(options.DaxDirectory, $"rdma-kv-{Environment.ProcessId}-{options.Seed}.dax");
        var owner = new AddressSpace(memory);
        var ns = new DaxNamespace(memory, path, 16UL << 20);
        DaxFileSystem? fs = null;
        FileHandle? file = null;
        RdmaDevice? server = null;
        var clients = new List<Client>();
        try
        {
            fs = DaxFileSystem.Format(ns);
            file = fs.Create("kv");
            file.Truncate(FileBytes);
            // Place the mapping on a PMD boundary so the file's 2 MiB extents map with PMD entries (what the kernel's
            // thp_get_unmapped_area does for DAX files): reserve more, keep the aligned part.
            ulong reserve = owner.Mmap(0, FileBytes + Page.PmdSize, Prot.None, MapFlags.Private | MapFlags.Anonymous | MapFlags.NoReserve);
            owner.Munmap(reserve, FileBytes + Page.PmdSize);
            ulong hint = Page.AlignUp(reserve, Page.PmdSize);
            ulong table = owner.Mmap(hint, FileBytes, Prot.Read | Prot.Write, MapFlags.Shared, file.Inode, 0, FileAccess.ReadWrite) + TableOffset;
            using var cpu = new Cpu(owner);
            var slotOf = new int[options.Keys];
            var rng = new Random(options.Seed);
            byte[] value = new byte[ValueBytes];
            for (int k = 0; k < options.Keys; k++)
            {
                int b = Home(k);
                while (cpu.Read<ulong>(Bucket(table, b) + 16) != 0)
                {
                    b = (b + 1) % Buckets;
                }
                slotOf[k] = b;
                rng.NextBytes(value);
                WriteValue(cpu, Bucket(table, b), (ulong)k, 2, value);
            }

            server = new RdmaDevice("kv_srv");
            ProtectionDomain pd = server.AllocPd(owner);
            long pinnedRefused = 0;
            try
            {
                pd.RegMr(table - TableOffset, FileBytes, AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_READ).Deregister();
            }
            catch (MmException ex) when (ex.Errno == Errno.EOPNOTSUPP)
            {
                pinnedRefused = 1;
            }
            var mr = (OdpMemoryRegion)pd.RegMr(table - TableOffset, FileBytes,
                AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_ATOMIC | AccessFlags.ON_DEMAND);
            for (int c = 0; c < options.Clients; c++)
            {
                clients.Add(new Client(memory, server, pd, c, options, table, mr.Rkey));
            }

            var sw = Stopwatch.StartNew();
            long deadline = Environment.TickCount64 + (long)options.Duration.TotalMilliseconds;
            foreach (Client c in clients)
            {
                c.Start(deadline, cancellation);
            }
            long updates = 0;
            long compactions = 0;
            long ticksPerUpdate = (long)(options.UpdateInterval.TotalSeconds * Stopwatch.Frequency);
            long nextCompaction = Environment.TickCount64 + (long)options.CompactionInterval.TotalMilliseconds;
            long nextUpdate = Stopwatch.GetTimestamp();
            while (Environment.TickCount64 < deadline && !cancellation.IsCancellationRequested)
            {
                while (Stopwatch.GetTimestamp() < nextUpdate)
                {
                    Thread.Yield();
                }
                nextUpdate += ticksPerUpdate;
                int k = rng.Next(options.Keys);
                ulong bucket = Bucket(table, slotOf[k]);
                Lock(cpu, bucket);
                ulong version = cpu.Read<ulong>(bucket + 8);
                rng.NextBytes(value);
                WriteValue(cpu, bucket, (ulong)k, version + 2, value);
                Unlock(cpu, bucket);
                updates++;
                if (Environment.TickCount64 >= nextCompaction)
                {
                    Compact(cpu, file, table, rng);
                    compactions++;
                    nextCompaction = Environment.TickCount64 + (long)options.CompactionInterval.TotalMilliseconds;
                }
            }
            foreach (Client c in clients)
            {
                c.Join();
            }
            double seconds = sw.Elapsed.TotalSeconds;
            long Sum(Func<Client, long> f) => clients.Sum(f);
            return new RdmaKvReport(
                Verified: Sum(c => c.Verified),
                Ops: Sum(c => c.Ops),
                StaleReads: Sum(c => c.Stale),
                RemoteErrors: Sum(c => c.RemoteErrors),
                OdpFaults: mr.Stats.PageFaultsHandled,
                Invalidations: mr.Stats.PageInvalidationsHandled,
                PinnedDaxRefused: pinnedRefused,
                Seconds: seconds,
                Retries: Sum(c => c.Retries),
                LockedReads: Sum(c => c.LockedReads),
                LocksLost: Sum(c => c.LocksLost),
                Updates: updates,
                Compactions: compactions,
                OdpFaultPages: mr.Stats.PageFaults,
                InvalidatedPages: mr.Stats.PageInvalidations);
        }
        finally
        {
            foreach (Client c in clients)
            {
                c.Dispose();
            }
            server?.Dispose();
            owner.Exit();
            file?.Dispose();
            fs?.Dispose();
            ns.Dispose();
            File.Delete(path);
        }
    }

    private static int Home(int key) => (int)(((uint)key * 2654435761u) >> 20) % Buckets;

    private static ulong Bucket(ulong table, int b) => table + (ulong)b * BucketBytes;

    private static uint Checksum(ulong key, ulong version, ReadOnlySpan<byte> value)
    {
        uint crc = BitOperations.Crc32C(BitOperations.Crc32C(~0u, key), version);
        for (int i = 0; i < value.Length; i += 8)
        {
            crc = BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt64LittleEndian(value[i..]));
        }
        return ~crc;
    }

    private static void WriteValue(Cpu cpu, ulong bucket, ulong key, ulong version, ReadOnlySpan<byte> value)
    {
        cpu.Write(bucket + 8, version - 1);             // odd: being written
        cpu.Write(bucket + 16, key + 1);
        cpu.Write(bucket + 24, (uint)value.Length);
        cpu.Write(bucket + 28, Checksum(key, version, value));
        cpu.Write(bucket + 32, value);
        cpu.Write(bucket + 8, version);                 // even: complete
    }

    private static void Lock(Cpu cpu, ulong bucket)
    {
        long start = Environment.TickCount64;
        var spin = new SpinWait();
        while (cpu.CompareExchange(bucket, (long)OwnerId, 0) != 0)
        {
            if (Environment.TickCount64 - start > 50)
            {
                cpu.Write(bucket, 0L); // a client lock a compaction made unreleasable: break it
            }
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    private static void Unlock(Cpu cpu, ulong bucket) => cpu.Write(bucket, 0L);

    /// <summary>Punches a hole over a random run of 64 buckets (16 pages) and writes them back, locks held.</summary>
    private static void Compact(Cpu cpu, FileHandle file, ulong table, Random rng)
    {
        const int run = 64;
        int first = rng.Next(Buckets / run) * run;
        for (int b = first; b < first + run; b++)
        {
            Lock(cpu, Bucket(table, b));
        }
        byte[] copy = new byte[run * BucketBytes];
        cpu.Read(Bucket(table, first), copy);
        ulong offset = TableOffset + (ulong)first * BucketBytes;
        file.PunchHole(offset, (ulong)copy.Length);
        for (int i = 0; i < run; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(copy.AsSpan(i * BucketBytes), 0); // rewritten unlocked
        }
        file.Write(offset, copy);
    }

    /// <summary>One client: its own address space, device, QP and a local ODP buffer.</summary>
    private sealed class Client : IDisposable
    {
        private readonly AddressSpace _mm;
        private readonly RdmaDevice _dev;
        private readonly CompletionQueue _cq;
        private readonly QueuePair _qp;
        private readonly MemoryRegion _local;
        private readonly ulong _buf;
        private readonly ulong _table;
        private readonly uint _rkey;
        private readonly int _id;
        private readonly RdmaKvOptions _options;
        private readonly ulong[] _lastVersion;
        private readonly byte[] _bucket = new byte[BucketBytes];
        private readonly Cpu _cpu;
        private Thread? _thread;
        private ulong _wrId;

        public Client(PhysicalMemory memory, RdmaDevice server, ProtectionDomain serverPd, int id, RdmaKvOptions options, ulong table, uint rkey)
        {
            _id = id;
            _options = options;
            _table = table;
            _rkey = rkey;
            _lastVersion = new ulong[options.Keys];
            _mm = new AddressSpace(memory);
            _cpu = new Cpu(_mm);
            _dev = new RdmaDevice($"kv_cli{id}");
            ProtectionDomain pd = _dev.AllocPd(_mm);
            _cq = _dev.CreateCq(64);
            _qp = pd.CreateQp(new QpInitAttr(_cq, _cq, new QpCap(16, 1, 1, 1)));
            CompletionQueue scq = server.CreateCq(64);
            QueuePair sqp = serverPd.CreateQp(new QpInitAttr(scq, scq, new QpCap(16, 1, 1, 1)));
            QueuePair.ConnectPair(_qp, sqp);
            _buf = _mm.Mmap(0, Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
            _local = pd.RegMr(_buf, Page.Size, AccessFlags.LOCAL_WRITE | AccessFlags.ON_DEMAND);
        }

        public long Verified;
        public long Ops;
        public long Stale;
        public long RemoteErrors;
        public long Retries;
        public long LockedReads;
        public long LocksLost;

        public void Start(long deadline, CancellationToken cancellation)
        {
            _thread = new Thread(() => Loop(deadline, cancellation)) { IsBackground = true, Name = $"kv client {_id}" };
            _thread.Start();
        }

        public void Join() => _thread?.Join();

        private void Loop(long deadline, CancellationToken cancellation)
        {
            var rng = new Random(_options.Seed * 31 + _id);
            ulong lockId = 0x100 + (ulong)_id;
            while (Environment.TickCount64 < deadline && !cancellation.IsCancellationRequested)
            {
                int key = rng.Next(_options.Keys);
                bool locked = rng.Next(8) == 0;
                int b = Home(key);
                for (int probe = 0; probe < MaxProbes; probe++)
                {
                    ulong bucket = Bucket(_table, b);
                    bool held = false;
                    if (locked)
                    {
                        if (!Atomic(WrOpcode.ATOMIC_CMP_AND_SWP, bucket, 0, lockId, out ulong orig))
                        {
                            break;
                        }
                        held = orig == 0;
                    }
                    if (!ReadBucket(bucket))
                    {
                        break;
                    }
                    if (held && (!Atomic(WrOpcode.ATOMIC_CMP_AND_SWP, bucket, lockId, 0, out ulong was) || was != lockId))
                    {
                        LocksLost++;
                    }
                    ulong stored = BinaryPrimitives.ReadUInt64LittleEndian(_bucket.AsSpan(16));
                    if (stored == 0)
                    {
                        Retries++; // a compacted-away run reads as zeroes until it is written back
                        continue;
                    }
                    if (stored != (ulong)key + 1)
                    {
                        b = (b + 1) % Buckets;
                        continue;
                    }
                    ulong version = BinaryPrimitives.ReadUInt64LittleEndian(_bucket.AsSpan(8));
                    uint crc = BinaryPrimitives.ReadUInt32LittleEndian(_bucket.AsSpan(28));
                    if ((version & 1) != 0 || crc != Checksum((ulong)key, version, _bucket.AsSpan(32)))
                    {
                        Retries++; // torn: written while read
                        probe--;
                        continue;
                    }
                    if (version < _lastVersion[key])
                    {
                        Stale++;
                    }
                    _lastVersion[key] = version;
                    Verified++;
                    if (held)
                    {
                        LockedReads++;
                    }
                    break;
                }
                Ops++;
            }
        }

        private bool ReadBucket(ulong bucket)
        {
            WorkCompletion wc = Post(new SendWr { Opcode = WrOpcode.RDMA_READ, SgList = [new Sge(_buf, BucketBytes, _local.Lkey)], RemoteAddr = bucket, Rkey = _rkey });
            if (wc.Status != WcStatus.SUCCESS)
            {
                RemoteErrors++;
                return false;
            }
            _cpu.Read(_buf, _bucket);
            return true;
        }

        private bool Atomic(WrOpcode op, ulong bucket, ulong compare, ulong swap, out ulong original)
        {
            WorkCompletion wc = Post(new SendWr { Opcode = op, SgList = [new Sge(_buf + 2048, 8, _local.Lkey)], RemoteAddr = bucket, Rkey = _rkey, CompareAdd = compare, Swap = swap });
            original = _cpu.Read<ulong>(_buf + 2048);
            if (wc.Status != WcStatus.SUCCESS)
            {
                RemoteErrors++;
                return false;
            }
            return true;
        }

        private WorkCompletion Post(SendWr wr)
        {
            wr.WrId = ++_wrId;
            wr.SendFlags = SendFlags.SIGNALED;
            _qp.PostSend(wr);
            return _cq.Wait(TimeSpan.FromSeconds(30));
        }

        public void Dispose()
        {
            _thread?.Join();
            _cpu.Dispose();
            _dev.Dispose();
            _mm.Exit();
        }
    }
}

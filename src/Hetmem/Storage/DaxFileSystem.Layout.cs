using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Text;
using Hetmem.Physical;

namespace Hetmem.Storage;

/// <summary>The on-media format of <see cref="DaxFileSystem"/>: superblock, inode table, extent lists.</summary>
public sealed partial class DaxFileSystem
{
    // Superblock (block 0).
    private const ulong Magic = 0x315841444D544548;   // "HETMDAX1" read little-endian
    private const uint Version = 1;
    private const int SbMagic = 0;                    // u64
    private const int SbVersion = 8;                  // u32
    private const int SbBlockSize = 12;               // u32
    private const int SbTotalBlocks = 16;             // u64
    private const int SbInodeStart = 24;              // u64
    private const int SbInodeCount = 32;              // u32
    private const int SbDataStart = 40;               // u64
    private const int SbChecksum = 48;                // u64: FNV-1a of bytes [0, 48)

    // Inode entry (block 1 + slot).
    private const uint InodeFree = 0;
    internal const uint InodeLinked = 1;
    internal const uint InodeOrphan = 2;              // unlinked while open: freed at the next mount
    private const int InState = 0;                    // u32
    private const int InNameLength = 4;               // u32
    private const int InName = 8;                     // 256 bytes of UTF-8
    private const int InSize = 264;                   // u64
    private const int InExtentCount = 272;            // u32: all extents, inline and overflow
    private const int InOverflow = 280;               // u64: first overflow block, 0 = none
    private const int InExtents = 288;                // extents, 24 bytes each
    private const int ExtentBytes = 24;               // u64 file block, u64 namespace block, u64 length
    private const int InlineExtents = (Page.Size - InExtents) / ExtentBytes;       // 158

    // Overflow block.
    private const int OvNext = 0;                     // u64: next overflow block, 0 = none
    private const int OvCount = 8;                    // u32
    private const int OvExtents = 16;
    private const int OverflowExtents = (Page.Size - OvExtents) / ExtentBytes;     // 170

    private readonly ConcurrentDictionary<DaxFile, byte> _orphans = new();         // leaf: unlinked files still open

    private readonly record struct Superblock(ulong TotalBlocks, int InodeCount, ulong DataStart);

    /// <summary>Number of overflow blocks an extent list of <paramref name="extents"/> entries needs.</summary>
    internal static int OverflowBlocksFor(int extents)
        => extents <= InlineExtents ? 0 : (extents - InlineExtents + OverflowExtents - 1) / OverflowExtents;

    /// <summary>
    /// Writes inode <paramref name="slot"/>'s entry and overflow chain (the caller sized
    /// <paramref name="overflow"/> with <see cref="OverflowBlocksFor"/>). Called by the file under its extent lock.
    /// </summary>
    internal void WriteInode(int slot, uint state, string name, ulong size, ReadOnlySpan<DaxExtent> extents, ReadOnlySpan<ulong> overflow)
    {
        Span<byte> b = Namespace.Block(1 + (ulong)slot);
        b.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(b[InState..], state);
        int nameLength = Encoding.UTF8.GetBytes(name, b.Slice(InName, FileNames.MaxBytes + 1));
        BinaryPrimitives.WriteUInt32LittleEndian(b[InNameLength..], (uint)nameLength);
        BinaryPrimitives.WriteUInt64LittleEndian(b[InSize..], size);
        BinaryPrimitives.WriteUInt32LittleEndian(b[InExtentCount..], (uint)extents.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(b[InOverflow..], overflow.IsEmpty ? 0 : overflow[0]);
        int inline = Math.Min(extents.Length, InlineExtents);
        for (int i = 0; i < inline; i++)
        {
            WriteExtent(b[(InExtents + i * ExtentBytes)..], extents[i]);
        }
        int next = inline;
        for (int k = 0; k < overflow.Length; k++)
        {
            Span<byte> o = Namespace.Block(overflow[k]);
            o.Clear();
            int n = Math.Min(extents.Length - next, OverflowExtents);
            BinaryPrimitives.WriteUInt64LittleEndian(o[OvNext..], k + 1 < overflow.Length ? overflow[k + 1] : 0);
            BinaryPrimitives.WriteUInt32LittleEndian(o[OvCount..], (uint)n);
            for (int i = 0; i < n; i++)
            {
                WriteExtent(o[(OvExtents + i * ExtentBytes)..], extents[next + i]);
            }
            next += n;
        }
    }

    /// <summary>Marks inode <paramref name="slot"/> free on media.</summary>
    internal void ClearInode(int slot) => Namespace.Block(1 + (ulong)slot).Clear();

    /// <summary>Makes inode <paramref name="slot"/>'s entry and overflow chain durable (kernel: the inode part of fsync).</summary>
    internal void FlushInode(int slot, ReadOnlySpan<ulong> overflow)
    {
        Namespace.Flush(0, 1);
        Namespace.Flush(1 + (ulong)slot, 1);
        foreach (ulong block in overflow)
        {
            Namespace.Flush(block, 1);
        }
    }

    private static void WriteExtent(Span<byte> d, DaxExtent e)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(d, e.FileBlock);
        BinaryPrimitives.WriteUInt64LittleEndian(d[8..], e.PhysicalBlock);
        BinaryPrimitives.WriteUInt64LittleEndian(d[16..], e.Length);
    }

    private static DaxExtent ReadExtent(ReadOnlySpan<byte> d)
        => new(BinaryPrimitives.ReadUInt64LittleEndian(d), BinaryPrimitives.ReadUInt64LittleEndian(d[8..]), BinaryPrimitives.ReadUInt64LittleEndian(d[16..]));

    private static ulong Fnv1a(ReadOnlySpan<byte> data)
    {
        ulong h = 0xcbf29ce484222325;
        foreach (byte x in data)
        {
            h = (h ^ x) * 0x100000001b3;
        }
        return h;
    }

    private void FormatMedia()
    {
        Memory.ZeroFrames(Namespace.FirstPfn, DataStartBlock);
        Span<byte> sb = Namespace.Block(0);
        BinaryPrimitives.WriteUInt64LittleEndian(sb[SbMagic..], Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(sb[SbVersion..], Version);
        BinaryPrimitives.WriteUInt32LittleEndian(sb[SbBlockSize..], Page.Size);
        BinaryPrimitives.WriteUInt64LittleEndian(sb[SbTotalBlocks..], TotalBlocks);
        BinaryPrimitives.WriteUInt64LittleEndian(sb[SbInodeStart..], 1);
        BinaryPrimitives.WriteUInt32LittleEndian(sb[SbInodeCount..], (uint)InodeCount);
        BinaryPrimitives.WriteUInt64LittleEndian(sb[SbDataStart..], DataStartBlock);
        BinaryPrimitives.WriteUInt64LittleEndian(sb[SbChecksum..], Fnv1a(sb[..SbChecksum]));
        Namespace.Flush(0, DataStartBlock);
    }

    private static Superblock ReadSuperblock(DaxNamespace ns)
    {
        ReadOnlySpan<byte> sb = ns.Block(0);
        if (BinaryPrimitives.ReadUInt64LittleEndian(sb[SbMagic..]) != Magic)
        {
            MmException.Throw(Errno.EINVAL, $"no Hetmem DAX file system on {ns.Path} (bad magic)");
        }
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(sb[SbVersion..]);
        if (version != Version)
        {
            MmException.Throw(Errno.EINVAL, $"DAX file system on {ns.Path} has version {version}; this build reads {Version}");
        }
        if (BinaryPrimitives.ReadUInt64LittleEndian(sb[SbChecksum..]) != Fnv1a(sb[..SbChecksum]))
        {
            MmException.Throw(Errno.EINVAL, $"DAX superblock on {ns.Path} is corrupt (checksum)");
        }
        uint blockSize = BinaryPrimitives.ReadUInt32LittleEndian(sb[SbBlockSize..]);
        ulong total = BinaryPrimitives.ReadUInt64LittleEndian(sb[SbTotalBlocks..]);
        ulong inodeStart = BinaryPrimitives.ReadUInt64LittleEndian(sb[SbInodeStart..]);
        uint inodes = BinaryPrimitives.ReadUInt32LittleEndian(sb[SbInodeCount..]);
        ulong dataStart = BinaryPrimitives.ReadUInt64LittleEndian(sb[SbDataStart..]);
        if (blockSize != Page.Size || inodeStart != 1 || inodes == 0 || 1 + (ulong)inodes > dataStart
            || !Page.IsAligned(dataStart, PmdBlocks) || dataStart >= total)
        {
            MmException.Throw(Errno.EINVAL, $"DAX superblock on {ns.Path} has an impossible geometry");
        }
        if (total > ns.Blocks)
        {
            MmException.Throw(Errno.EINVAL, $"DAX file system of {total} blocks does not fit namespace {ns.Path} of {ns.Blocks} blocks");
        }
        return new Superblock(total, (int)inodes, dataStart);
    }

    /// <summary>Reads every inode entry, frees orphans, and marks the blocks of the rest used.</summary>
    private void LoadInodes()
    {
        for (int slot = 0; slot < InodeCount; slot++)
        {
            ReadOnlySpan<byte> b = Namespace.Block(1 + (ulong)slot);
            uint state = BinaryPrimitives.ReadUInt32LittleEndian(b[InState..]);
            if (state == InodeFree)
            {
                continue;
            }
            if (state is not (InodeLinked or InodeOrphan))
            {
                Corrupt(slot, $"unknown state {state}");
            }
            uint nameLength = BinaryPrimitives.ReadUInt32LittleEndian(b[InNameLength..]);
            if (nameLength is 0 or > FileNames.MaxBytes)
            {
                Corrupt(slot, "bad name length");
            }
            string name = Encoding.UTF8.GetString(b.Slice(InName, (int)nameLength));
            ulong size = BinaryPrimitives.ReadUInt64LittleEndian(b[InSize..]);
            uint rawCount = BinaryPrimitives.ReadUInt32LittleEndian(b[InExtentCount..]);
            if (size > MaxFileSize || rawCount > TotalBlocks - DataStartBlock || rawCount > int.MaxValue)
            {
                Corrupt(slot, "bad size or extent count");
            }
            int count = (int)rawCount;
            var extents = new List<DaxExtent>(count);
            var overflow = new List<ulong>();
            for (int i = 0; i < Math.Min(count, InlineExtents); i++)
            {
                extents.Add(ReadExtent(b[(InExtents + i * ExtentBytes)..]));
            }
            ulong next = BinaryPrimitives.ReadUInt64LittleEndian(b[InOverflow..]);
            while (extents.Count < count)
            {
                if (next < DataStartBlock || next >= TotalBlocks || overflow.Count > count)
                {
                    Corrupt(slot, "bad overflow chain");
                }
                overflow.Add(next);
                ReadOnlySpan<byte> o = Namespace.Block(next);
                int n = (int)BinaryPrimitives.ReadUInt32LittleEndian(o[OvCount..]);
                if (n <= 0 || n > OverflowExtents || extents.Count + n > count)
                {
                    Corrupt(slot, "bad overflow block");
                }
                for (int i = 0; i < n; i++)
                {
                    extents.Add(ReadExtent(o[(OvExtents + i * ExtentBytes)..]));
                }
                next = BinaryPrimitives.ReadUInt64LittleEndian(o[OvNext..]);
            }
            ulong eofBlocks = Page.AlignUp(size, Page.Size) >> Page.Shift;
            ulong prevEnd = 0;
            foreach (DaxExtent e in extents)
            {
                if (e.Length == 0 || e.FileBlock < prevEnd || e.FileBlock + e.Length > eofBlocks || e.FileBlock + e.Length < e.FileBlock)
                {
                    Corrupt(slot, $"extent {e} is out of order or beyond the file size");
                }
                prevEnd = e.FileBlock + e.Length;
            }
            if (state == InodeOrphan)
            {
                // Unlinked while open and never closed before the last unmount: its blocks are free (kernel: orphan cleanup).
                ClearInode(slot);
                continue;
            }
            foreach (DaxExtent e in extents)
            {
                if (!_allocator.Take(e.PhysicalBlock, e.Length))
                {
                    Corrupt(slot, $"extent {e} overlaps metadata or another file");
                }
            }
            foreach (ulong o in overflow)
            {
                if (!_allocator.Take(o, 1))
                {
                    Corrupt(slot, $"overflow block {o} overlaps metadata or another file");
                }
            }
            if (_files.ContainsKey(name))
            {
                Corrupt(slot, $"duplicate name {name}");
            }
            _slotUsed[slot] = true;
            _files.Add(name, new DaxFile(this, slot, name, size, extents, overflow, linked: true));
        }
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private void Corrupt(int slot, string what)
        => throw new MmException(Errno.EINVAL, $"DAX file system on {Namespace.Path}: inode {slot} is corrupt: {what}");
}

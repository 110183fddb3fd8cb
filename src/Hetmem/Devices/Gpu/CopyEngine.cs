using Hetmem.Physical;

namespace Hetmem.Devices.Gpu;

/// <summary>
/// A batch of page copies for the GPU's copy engine (kernel: UVM's CE pushes, Xe's migrate job): pairs are queued
/// with <see cref="Add"/> and executed by <see cref="Submit"/>, which merges runs that are contiguous on both sides
/// into one block copy (vectorised by <c>Buffer.MemoryCopy</c>) and zero-fills destinations without a source.
/// </summary>
/// <remarks>Not thread-safe: one batch per thread (the servicing thread and each CPU fault thread use their own).</remarks>
public sealed unsafe class CopyEngine
{
    private readonly ulong[] _src;
    private readonly ulong[] _dst;
    private int _count;

    /// <summary>Creates a batch of up to <paramref name="capacity"/> pages.</summary>
    public CopyEngine(int capacity = 512)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        _src = new ulong[capacity];
        _dst = new ulong[capacity];
    }

    /// <summary>Pages queued.</summary>
    public int Count => _count;

    /// <summary>Queues a copy of page <paramref name="srcPfn"/> to <paramref name="dstPfn"/>; <see cref="Page.NoPfn"/> as the source zero-fills.</summary>
    /// <exception cref="InvalidOperationException">The batch is full.</exception>
    public void Add(ulong srcPfn, ulong dstPfn)
    {
        if (_count == _src.Length)
        {
            throw new InvalidOperationException("copy batch is full; submit first");
        }
        _src[_count] = srcPfn;
        _dst[_count] = dstPfn;
        _count++;
    }

    /// <summary>Runs the queued copies and empties the batch. Returns the bytes copied (zero fills not included).</summary>
    public long Submit(PhysicalMemory memory)
    {
        long bytes = 0;
        int i = 0;
        while (i < _count)
        {
            int j = i + 1;
            bool zero = _src[i] == Page.NoPfn;
            while (j < _count && _dst[j] == _dst[i] + (ulong)(j - i)
                   && (zero ? _src[j] == Page.NoPfn : _src[j] == _src[i] + (ulong)(j - i)))
            {
                j++;
            }
            ulong n = (ulong)(j - i);
            if (zero)
            {
                memory.ZeroFrames(_dst[i], n);
            }
            else
            {
                long len = (long)(n << Page.Shift);
                Buffer.MemoryCopy(memory.Address(_src[i]), memory.Address(_dst[i]), len, len);
                bytes += len;
            }
            i = j;
        }
        _count = 0;
        return bytes;
    }
}
